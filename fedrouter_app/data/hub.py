"""Hub tables: datasets on the Hugging Face hub, through ``datasets.load_dataset`` (``data.source=hub``).

``path`` is a dataset id (``nyu-mll/glue``) or a local directory of data files
(what tests and offline users point at); ``config`` picks the dataset's
configuration. Where the hub is unreachable (``HF_HUB_OFFLINE=1``, no
network), loading fails with one line saying so; ``datasets``' own cache
serves later runs.
"""

from __future__ import annotations

from typing import Any

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.rows import RawTable
from fedrouter_app.schema.data import DataSettings, TableSettings


def read_hub(table: TableSettings, settings: DataSettings) -> list[RawTable]:
    """The table's training split, and its test split when it names one."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"hub dataset {table.path!r}: data.source=hub needs the datasets package (pip install -e '.[hub]')"
        ) from None
    splits: list[tuple[Any, str]] = [("train", table.train_split)]
    if table.test_split:
        splits.append(("test", table.test_split))
    raws = []
    for role, split in splits:
        origin = f"hub dataset {table.path!r}" + (f" ({table.config})" if table.config else "") + f" split {split!r}"
        try:
            dataset = datasets.load_dataset(table.path, table.config, split=split)
        except Exception as err:  # datasets raises many types (connection, missing config or split, ...)
            reason = " ".join(str(err).split())[:300]
            raise DataError(
                f"{origin}: cannot load it ({type(err).__name__}: {reason}); where the hub is unreachable, export "
                "the data to local files and use data=files"
            ) from None
        raws.append(RawTable(origin, role, dataset.to_list(), list(dataset.column_names)))
    return raws
