"""Finite sources: tasks read from tables (local files, hub datasets, BIG-bench), held in memory per process.

Rows from every table of ``data.tables`` are mapped to examples
(:mod:`fedrouter_app.data.mappings`), grouped by task and split into a train
and a test pool. A task whose tables give no test rows has
``data.test_fraction`` of its rows (at most ``data.max_test_examples``) held
out by a seeded permutation that depends on the task alone, so every run and
seed tests on the same rows. Pools are parsed once per process and shared by
all the virtual clients that process serves.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.example import Example, MetricKind
from fedrouter_app.data.mappings import check_columns, row_mapping
from fedrouter_app.data.rows import RawTable
from fedrouter_app.schema.data import DataSettings, TableSettings
from fedrouter_app.seeding import numpy_rng

Loader = Callable[[TableSettings, DataSettings], list[RawTable]]

# Answers of at most this many words make a task "exact"-scored under metric=auto ...
SHORT_ANSWER_WORDS = 3
# ... when at least this share of its training answers is that short.
SHORT_ANSWER_SHARE = 0.9


@dataclass(frozen=True)
class TaskPools:
    """One task's examples.

    Attributes
    ----------
    train, test : tuple of Example
        Disjoint pools, in a fixed (task-seeded) order.
    metric : {"exact", "rouge"}
        How answers are scored.
    origins : tuple of str
        Files or datasets the rows came from (for error messages).
    """

    train: tuple[Example, ...]
    test: tuple[Example, ...]
    metric: MetricKind
    origins: tuple[str, ...]


def loaders() -> dict[str, Loader]:
    """Loader of every table-based source, by ``data.source`` name (imported lazily: hub needs datasets)."""
    from fedrouter_app.data.bigbench import read_bigbench
    from fedrouter_app.data.files import read_files
    from fedrouter_app.data.hub import read_hub
    from fedrouter_app.data.packaged import read_packaged

    return {"files": read_files, "hub": read_hub, "bigbench": read_bigbench, "packaged": read_packaged}


_lock = threading.Lock()
_cache: dict[str, dict[str, TaskPools]] = {}


def load_pools(settings: DataSettings) -> dict[str, TaskPools]:
    """The pools of every task in ``settings.tasks``, parsed once per process and settings."""
    key = json.dumps(
        [settings.source, settings.tasks, [asdict(t) for t in settings.tables], settings.test_fraction,
         settings.max_test_examples, settings.cache_dir, settings.archive, settings.task_prompts],
        sort_keys=True,
    )  # fmt: skip
    with _lock:
        if key not in _cache:
            if len(_cache) >= 4:
                _cache.clear()
            _cache[key] = build_pools(settings, loaders()[settings.source])
        return _cache[key]


def build_pools(settings: DataSettings, loader: Loader) -> dict[str, TaskPools]:
    """Read every table, map rows to examples and split each listed task into train and test pools."""
    if not settings.tables:
        raise DataError(f"data.source={settings.source} needs at least one entry in data.tables")
    wanted = set(settings.tasks)
    rows: dict[str, dict[str, list[Example]]] = defaultdict(lambda: {"train": [], "test": []})
    origins: dict[str, dict[str, None]] = defaultdict(dict)  # task -> origins of its rows, in order
    metrics: dict[str, str] = {}
    read: list[str] = []
    found: dict[str, int] = defaultdict(int)
    for table in settings.tables:
        mapping = row_mapping(table, settings.task_prompts)
        for raw in loader(table, settings):
            if not raw.rows:
                raise DataError(f"{raw.origin}: no rows")
            check_columns(mapping, raw.columns, raw.origin)
            read.append(raw.origin)
            examples = []
            for number, row in enumerate(subsample(raw.rows, table.max_rows, raw.origin), 1):
                task = mapping.task_of(row)
                if not task:
                    raise DataError(f"{raw.origin}: row {number} has an empty task name (column {table.task_field!r})")
                found[task] += 1
                if task not in wanted:
                    continue
                instruction, response = mapping.convert(row)
                if instruction and response:
                    examples.append(Example(task, instruction, response))
            for ex in balanced(examples, raw.origin) if table.balance else examples:
                rows[ex.task][raw.split].append(ex)
                origins[ex.task][raw.origin] = None
                metrics.setdefault(ex.task, table.metric)
    pools = {}
    for task in settings.tasks:
        where = ", ".join(origins[task]) or ", ".join(read)
        if not rows[task]["train"] and not rows[task]["test"]:
            have = ", ".join(f"{t} ({n})" for t, n in sorted(found.items())) or "(none)"
            raise DataError(f"{where}: empty task {task!r}: no usable rows (rows per task found: {have})")
        train, test = split_task(task, rows[task]["train"], rows[task]["test"], settings, where)
        pools[task] = TaskPools(train, test, resolve_metric(metrics[task], train), tuple(origins[task]))
    return pools


def subsample(rows: list[dict], max_rows: int | None, origin: str) -> list[dict]:
    """At most ``max_rows`` rows, a seeded sample that depends on the origin alone (order kept)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    keep = np.sort(numpy_rng("rows", origin).choice(len(rows), size=max_rows, replace=False))
    return [rows[i] for i in keep]


def balanced(examples: list[Example], origin: str) -> list[Example]:
    """Equally many examples of every (task, answer): a sample of the rarest answer's count, seeded by the origin."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[(ex.task, ex.response)].append(i)
    least: dict[str, int] = {}
    for (task, _), members in groups.items():
        least[task] = min(least.get(task, len(members)), len(members))
    keep: list[int] = []
    for (task, answer), members in sorted(groups.items()):
        rng = numpy_rng("balance", origin, task, answer)
        keep += [members[j] for j in rng.choice(len(members), size=least[task], replace=False)]
    return [examples[i] for i in sorted(keep)]


def split_task(
    task: str, train: list[Example], test: list[Example], settings: DataSettings, where: str
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """Shuffle the pools (task-seeded) and hold out a test share when the task has no test rows."""
    train = [train[i] for i in numpy_rng("pool", task, "train").permutation(len(train))]
    test = [test[i] for i in numpy_rng("pool", task, "test").permutation(len(test))]
    if not test:
        if len(train) < 2:
            raise DataError(
                f"{where}: task {task!r} has {len(train)} usable row(s); at least 2 are needed to hold one out for "
                "testing"
            )
        n_test = min(settings.max_test_examples, max(1, round(settings.test_fraction * len(train))), len(train) - 1)
        train, test = train[n_test:], train[:n_test]
    if not train:
        raise DataError(f"{where}: task {task!r} has test rows but no training rows")
    return tuple(train), tuple(test)


def resolve_metric(declared: str, train: Sequence[Example]) -> MetricKind:
    """``exact`` or ``rouge`` as declared; ``auto`` picks exact when answers are mostly short."""
    if declared in ("exact", "rouge"):
        return declared  # type: ignore[return-value]
    short = sum(1 for ex in train if len(ex.response.split()) <= SHORT_ANSWER_WORDS)
    return "exact" if short >= SHORT_ANSWER_SHARE * len(train) else "rouge"


class TableSource:
    """A :class:`~fedrouter_app.data.sources.DataSource` over finite pools.

    Position ``i`` of a task's split is example ``i mod size`` of the pool in a
    run-seeded order, so partitions (which give clients disjoint positions,
    see :mod:`fedrouter_app.data.partition`) differ between seeds while the
    train/test membership does not.
    """

    def __init__(self, settings: DataSettings, seed: int) -> None:
        self.pools = load_pools(settings)
        self.seed = seed
        self._orders: dict[tuple[str, str], np.ndarray] = {}

    def tasks(self) -> list[str]:
        return list(self.pools)

    def metric(self, task: str) -> MetricKind:
        return self.pools[task].metric

    def size(self, task: str, split: str) -> int:
        """Examples in ``task``'s ``split`` pool."""
        return len(self._pool(task, split))

    def examples(self, task: str, split: str, indices: Sequence[int]) -> list[Example]:
        pool = self._pool(task, split)
        key = (task, split)
        if key not in self._orders:
            self._orders[key] = numpy_rng(self.seed, "order", task, split).permutation(len(pool))
        order = self._orders[key]
        return [pool[int(order[i % len(pool)])] for i in indices]

    def _pool(self, task: str, split: str) -> tuple[Example, ...]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid choices: train, test")
        return self.pools[task].train if split == "train" else self.pools[task].test
