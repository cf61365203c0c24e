"""Benchmarks (not tests): they print tables and write JSON, and their targets are read, not asserted.

``python -m bench.scale`` is the scale benchmark (see its docstring).
"""
