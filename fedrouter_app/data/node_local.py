"""Node-local data (``data=node``): each SuperNode trains and is tested on files only it holds.

The server is told only the task names it reports under (``data.tasks``; the
preset's single ``local`` task needs no task column at all), never a path:
the files are named in each node's own config and read on that node alone.

``--node-config "data='/data/train.jsonl'"`` names a JSON, JSON Lines, CSV or
parquet file (or a glob), with the columns ``instruction`` and ``response``
(and ``task``, when the run has several tasks); ``data-test='/data/test.jsonl'``
names its held-out rows (else ``data.test_fraction`` of each task's rows are
held out). ``data='/etc/fedrouter/data.yaml'`` names a node-side data config
instead: one table with the keys of a ``data.tables`` entry of ``data=files``
(``path``, ``task`` or ``task_field``, ``instruction_field``,
``context_field``, ``response_field``, ``test_split``, ``format``, ``metric``,
``prefix``, ``max_rows``); relative paths in it are read from the YAML's
directory.

A client's training set is every usable row; its test set is at most
``scenario.test_examples_per_task`` held-out rows per task. Missing or
malformed data raises a :class:`~fedrouter_app.data.errors.DataError` naming
the file, so the node's registration fails with that reason and the run goes
on with the other nodes.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.example import Example, MetricKind
from fedrouter_app.data.files import matching, read_file, read_files
from fedrouter_app.data.mappings import check_columns, row_mapping
from fedrouter_app.data.partition import ClientData, check_cluster_samples
from fedrouter_app.data.tables import resolve_metric, split_task, subsample
from fedrouter_app.schema.data import TableSettings
from fedrouter_app.schema.settings import RunConfig

SOURCE = "node"
NODE_DATA = "data"
NODE_TEST = "data-test"
YAML_SUFFIXES = (".yaml", ".yml")
TASK_COLUMN = "task"


def uses_node_data(cfg: RunConfig) -> bool:
    """Whether the run reads each node's own files (``data.source=node``)."""
    return cfg.data.source == SOURCE


def node_table(cfg: RunConfig, node_config: Mapping[str, Any]) -> TableSettings:
    """The table the node's config describes, checked."""
    path = str(node_config.get(NODE_DATA, "") or "").strip()
    if not path:
        raise DataError(
            "this run reads each node's own data (data.source=node) but this node's config names none: "
            "start its SuperNode with --node-config \"data='/path/to/train.jsonl' ...\""
        )
    if path.lower().endswith(YAML_SUFFIXES):
        table = _yaml_table(Path(path).expanduser())
    else:
        test = str(node_config.get(NODE_TEST, "") or "").strip() or None
        table = _default_table(cfg, path, test)
    try:
        table.validate()
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    return table


def _default_table(cfg: RunConfig, path: str, test: str | None) -> TableSettings:
    """Columns ``instruction``, ``response``, and ``task`` unless the run has one task and the file no such column."""
    columns = read_file(matching(path)[0])[1]
    if TASK_COLUMN in columns or len(cfg.data.tasks) != 1:
        return TableSettings(path=path, task_field=TASK_COLUMN, test_split=test)
    return TableSettings(path=path, task=cfg.data.tasks[0], test_split=test)


def _yaml_table(path: Path) -> TableSettings:
    """A node-side data config: one table, with relative paths read from the YAML's directory."""
    if not path.is_file():
        raise DataError(f"{path}: node data config not found")
    try:
        raw = OmegaConf.load(path)
        if not OmegaConf.is_dict(raw):
            raise DataError(f"{path}: a node data config is one mapping (the keys of a data.tables entry)")
        table = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TableSettings), raw))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        # YAMLError: not YAML, or tags that would construct Python objects (the loader refuses them).
        raise DataError(f"{path}: {' '.join(str(err).split())[:200]}") from None
    assert isinstance(table, TableSettings)
    here = path.parent

    def resolved(p: str | None) -> str | None:
        return p if p is None or Path(p).expanduser().is_absolute() else str(here / p)

    return replace(table, path=resolved(table.path) or "", test_split=resolved(table.test_split))


_lock = threading.Lock()
_cache: dict[str, ClientData] = {}


def node_client_data(cfg: RunConfig, partition_id: int, node_config: Mapping[str, Any]) -> ClientData:
    """This node's client data from its own files (parsed once per process and file version)."""
    table = node_table(cfg, node_config)
    files = [*matching(table.path), *(matching(table.test_split) if table.test_split else [])]
    stamp = [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files]
    d = cfg.data
    settings = (d.tasks, d.test_fraction, d.max_test_examples, d.source, d.task_prompts)
    key = json.dumps([asdict(table), stamp, settings, cfg.scenario.test_examples_per_task, partition_id])
    with _lock:
        if key not in _cache:
            if len(_cache) >= 16:
                _cache.clear()
            _cache[key] = build_node_data(cfg, table, partition_id)
        data = _cache[key]
    check_cluster_samples(cfg, data)
    return data


def build_node_data(cfg: RunConfig, table: TableSettings, partition_id: int) -> ClientData:
    """Read the node's table, map its rows and split each task into training and test rows."""
    mapping = row_mapping(table, cfg.data.task_prompts)
    rows: dict[str, dict[str, list[Example]]] = defaultdict(lambda: {"train": [], "test": []})
    for raw in read_files(table, cfg.data):
        if not raw.rows:
            raise DataError(f"{raw.origin}: no rows")
        check_columns(mapping, raw.columns, raw.origin)
        for number, row in enumerate(subsample(raw.rows, table.max_rows, raw.origin), 1):
            task = mapping.task_of(row)
            if not task:
                raise DataError(f"{raw.origin}: row {number} has an empty task name (column {table.task_field!r})")
            if task not in cfg.data.tasks:
                raise DataError(
                    f"{raw.origin}: row {number} has task {task!r}, which is not one of the run's data.tasks "
                    f"({', '.join(cfg.data.tasks)})"
                )
            instruction, response = mapping.convert(row)
            if instruction and response:
                rows[task][raw.split].append(Example(task, instruction, response))
    if not rows:
        raise DataError(f"{table.path}: no usable rows (every row lacks an instruction or a response)")
    own = tuple(t for t in cfg.data.tasks if rows[t]["train"] or rows[t]["test"])
    train: list[Example] = []
    test: list[Example] = []
    metrics: dict[str, MetricKind] = {}
    for task in own:
        task_train, task_test = split_task(task, rows[task]["train"], rows[task]["test"], cfg.data, table.path)
        train += task_train
        test += task_test[: cfg.scenario.test_examples_per_task]
        metrics[task] = resolve_metric(table.metric, task_train)
    return ClientData(partition_id=partition_id, tasks=own, train=tuple(train), test=tuple(test), metrics=metrics)
