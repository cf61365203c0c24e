"""Raw rows as loaders return them, before mapping to examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class RawTable:
    """Rows read from one file, hub split or BIG-bench task.

    Attributes
    ----------
    origin : str
        Where the rows come from, for error messages (a path, ``hub:<id>``, ...).
    split : {"train", "test"}
        The stream the rows feed; a task with no ``test`` rows has some held out.
    rows : list of dict
        One dict per row, column name to value.
    columns : list of str
        Column names present.
    """

    origin: str
    split: Literal["train", "test"]
    rows: list[dict[str, Any]]
    columns: list[str]
