"""Generated text in hand-written files: what lies between ``<!-- name:start -->`` and ``<!-- name:end -->``.

Reports, benchmarks and the configuration reference write their tables into
the README and the docs this way, so a page keeps its prose and a test can
re-render a table and compare.
"""

from __future__ import annotations

import re
from pathlib import Path


def splice(document: str, marker: str, content: str) -> str:
    """``document`` with the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` replaced."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if not pattern.search(document):
        raise ValueError(f"no '{start}' ... '{end}' markers in the document")
    return pattern.sub(lambda _: f"{start}\n{content}{end}", document, count=1)


def splice_file(path: Path, marker: str, content: str) -> None:
    """Replace what lies between ``marker``'s markers in the file at ``path`` with ``content`` (see :func:`splice`)."""
    path.write_text(splice(path.read_text(), marker, content))
