"""Data sources: where examples of each task come from.

A source answers three questions: which tasks it has, how answers of a task are
scored, and what example ``i`` of a task's train or test stream is. Clients
build their own partition from it, so no data ever crosses the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fedrouter_app.data import synthetic
from fedrouter_app.data.example import Example, MetricKind

if TYPE_CHECKING:
    from fedrouter_app.settings import DataSettings


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


def make_source(settings: DataSettings, seed: int) -> DataSource:
    """The data source named by ``settings.source``."""
    if settings.source == "synthetic":
        return SyntheticSource(seed, settings.prefix_free)
    raise ValueError(f"unknown data.source {settings.source!r}; valid choices: synthetic")


def known_tasks(settings: DataSettings) -> list[str]:
    """Tasks the configured source offers (the seed does not change the list)."""
    return make_source(settings, seed=0).tasks()
