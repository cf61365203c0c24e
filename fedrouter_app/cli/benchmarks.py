"""The benchmarks of ``bench/`` (``fedrouter bench``): which there are, and running one as ``python -m bench.<name>``.

``bench/`` sits at the top of the repository, beside the package, and is not
part of an installed wheel: the benchmarks are found when Python can import
``bench`` (an editable install, or the repository as working directory).
"""

from __future__ import annotations

import ast
import importlib.util
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

PACKAGE = "bench"


class BenchMissingError(RuntimeError):
    """``bench/`` cannot be found."""


def bench_dir() -> Path:
    """The folder of the ``bench`` package: importable, or in the working directory (a repository checkout)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None and (Path.cwd() / PACKAGE / "__init__.py").is_file():
        sys.path.insert(0, str(Path.cwd()))
        spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchMissingError(
            "the benchmarks are not installed: they live in the repository's bench/ folder; run this from a checkout "
            "of the repository (pip install -e . there)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def available() -> dict[str, str]:
    """Every runnable benchmark (a module with a ``__main__`` block) and the first line of its docstring."""
    found = {}
    for path in sorted(bench_dir().glob("*.py")):
        source = path.read_text()
        if path.stem.startswith("_") or '__name__ == "__main__"' not in source:
            continue
        doc = ast.get_docstring(ast.parse(source)) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def run(name: str, args: Sequence[str], prog: str) -> int:
    """Run ``bench.<name>`` as ``python -m`` would, with ``args`` as its command line."""
    bench_dir()  # puts a checkout's bench/ on the path
    sys.argv = [prog, *args]
    runpy.run_module(f"{PACKAGE}.{name}", run_name="__main__", alter_sys=False)
    return 0
