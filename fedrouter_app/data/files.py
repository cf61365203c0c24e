"""Local tables: JSON, JSON Lines, CSV and parquet files (``data.source=files``).

A table's ``path`` may be a glob; its ``test_split``, when set, is a second
path (or glob) holding the held-out rows. Every problem is raised as a
:class:`~fedrouter_app.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path
from typing import Any

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.rows import RawTable
from fedrouter_app.schema.data import DataSettings, TableSettings

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def read_files(table: TableSettings, settings: DataSettings) -> list[RawTable]:
    """Every file of the table, as raw rows tagged with their split."""
    raws = [RawTable(str(p), "train", *read_file(p, table.format)) for p in matching(table.path)]
    if table.test_split:
        raws += [RawTable(str(p), "test", *read_file(p, table.format)) for p in matching(table.test_split)]
    return raws


def matching(pattern: str) -> list[Path]:
    """Files a path or glob names (``~`` expanded), sorted; an error when there are none."""
    expanded = str(Path(pattern).expanduser())
    paths = sorted(Path(p) for p in glob.glob(expanded)) if glob.has_magic(expanded) else [Path(expanded)]
    if not paths:
        raise DataError(f"{pattern}: no file matches this pattern")
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: unreadable file (it does not exist or is not a file)")
    return paths


def file_format(path: Path, declared: str) -> str:
    """The declared format, or the one the suffix names."""
    if declared != "auto":
        return declared
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; set the table's format to one of "
            + ", ".join(sorted(set(SUFFIXES.values())))
        )
    return SUFFIXES[path.suffix.lower()]


def read_file(path: Path, declared: str = "auto") -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of one file and its column names."""
    kind = file_format(path, declared)
    try:
        rows, columns = READERS[kind](path)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        # ValueError covers json's decode errors and pyarrow's invalid-file errors.
        raise DataError(f"{path}: unreadable {kind} file: {' '.join(str(err).split())[:200]}") from None
    except RecursionError:
        raise DataError(f"{path}: unreadable {kind} file: nested too deeply to hold rows") from None
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    return rows, columns


def _records(path: Path, rows: Any, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected {where}")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return rows, columns


def _read_json(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        # Column-oriented ({"column": [values...]}), as pandas' to_json(orient="list") writes.
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: columns of different lengths {sorted(lengths)}")
        data = [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    return _records(path, data, "a JSON list of objects (one per row) or an object of equal-length columns")


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataError(f"{path}: line {number} is nested too deeply to be a row") from None
    return _records(path, rows, "one JSON object per line")


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [dict(row) for row in reader]
        return rows, list(reader.fieldnames or [])


def _read_parquet(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install -e '.[hub]')") from None
    table = pq.read_table(path)
    return table.to_pylist(), list(table.column_names)


READERS = {"json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}
