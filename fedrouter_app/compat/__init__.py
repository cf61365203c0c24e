"""Fences around the internals of other libraries that fedrouter relies on.

A few pieces of fedrouter reach past a library's public API: they patch
Flower's simulation runtime, set peft's active adapters directly and re-run
transformers' weight initialisation. Each library's such pieces live in one
module here, which checks at import that the installed version is in the
range they were tested with (:mod:`fedrouter_app.compat.versions`) and offers
small functions the rest of the code calls instead of touching private names.
Outside the range, importing the module fails with a one-line message; the
tests under ``tests/fedrouter_app/compat`` pin the behaviour each piece needs,
so that an upgrade fails a test rather than a run.
"""
