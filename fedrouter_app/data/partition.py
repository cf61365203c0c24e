"""Client partitions: which tasks and examples each client holds.

Each client builds only its own partition, from its partition id and the run
config, so memory does not grow with the number of clients and the same code
serves simulation and deployment.

The scenario decides how many training examples of each task a client holds
(:func:`train_counts`): ``window`` deals cyclic windows of tasks (a client's
examples split evenly over its tasks, or, with ``scenario.shares=pool``, in
proportion to the tasks' training pools), ``dirichlet`` splits every task over
clients in Dirichlet proportions. Tasks in
``scenario.unseen_tasks`` are never trained on; a client's test set holds its
own tasks (``eval.scope=local``), every task, unseen ones included
(``global``), the tasks the split covers (``covered``), or the tasks of the
score cells the scenario exists to measure (``claims``).

With ``scenario.drift`` (``scenario=drift``) a client's data depend on the
round: from :func:`drift_round` on, the clients :func:`drifting_clients` picks
hold the tasks of client ``(i + offset) mod num_clients`` instead of their own
(:func:`is_drifted`); in every other scenario the round plays no part.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedrouter_app.data.errors import TooFewSamplesError
from fedrouter_app.data.example import Example, MetricKind
from fedrouter_app.data.sources import DataSource, make_source
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.settings import RunConfig
from fedrouter_app.seeding import numpy_rng

log = logging.getLogger(__name__)

# Stream indices of different clients never overlap: client i uses
# [i * STRIDE, (i + 1) * STRIDE) of every task's stream.
STRIDE = 1_000_000

# Dirichlet draws tried before giving up on giving every client enough data.
MAX_DRAWS = 1000


@dataclass(frozen=True)
class ClientData:
    """One client's data.

    Attributes
    ----------
    partition_id : int
        Index of the client in ``[0, num_clients)``.
    tasks : tuple of str
        Tasks the client trains on (its "own" tasks).
    train : tuple of Example
        Training examples.
    test : tuple of Example
        Held-out examples: own tasks under ``eval.scope=local``, every task
        under ``global``.
    metrics : dict
        Scoring kind of every task in ``test``.
    """

    partition_id: int
    tasks: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    metrics: dict[str, MetricKind]


def training_tasks(cfg: RunConfig) -> tuple[str, ...]:
    """``data.tasks`` without ``scenario.unseen_tasks``, in order."""
    unknown = [t for t in cfg.scenario.unseen_tasks if t not in cfg.data.tasks]
    if unknown:
        raise ConfigError(
            f"scenario.unseen_tasks {', '.join(map(repr, unknown))} not in data.tasks; "
            f"valid choices: {', '.join(cfg.data.tasks)}"
        )
    return tuple(t for t in cfg.data.tasks if t not in cfg.scenario.unseen_tasks)


def train_counts(cfg: RunConfig, partition_id: int, drifted: bool = False) -> dict[str, int]:
    """Training examples of each task client ``partition_id`` holds (tasks with none are left out).

    ``drifted``: what the client holds after a drift (``scenario.drift``): the
    window of client :func:`drift_source` instead of its own.
    """
    tasks = training_tasks(cfg)
    scenario = cfg.scenario
    if scenario.kind == "window":
        m = scenario.tasks_per_client
        first = drift_source(cfg, partition_id) if drifted else partition_id // scenario.clients_per_window
        window = [tasks[(first + j) % len(tasks)] for j in range(m)]
        if scenario.shares == "pool":
            sizes = pool_sizes(cfg)
            shares = proportional_shares(scenario.train_examples_per_client, [sizes[t] for t in window])
        else:
            shares = task_shares(scenario.train_examples_per_client, m)
        return dict(zip(window, shares, strict=True))
    counts = dirichlet_counts(
        cfg.seed,
        cfg.num_clients,
        tasks,
        scenario.alpha,
        scenario.train_examples_per_client,
        scenario.min_train_examples,
    )
    return {task: int(n) for task, n in zip(tasks, counts[partition_id], strict=True) if n > 0}


def drift_round(cfg: RunConfig) -> int | None:
    """First round on drifted data: ``scenario.drift.round``, half-way by default; None without drift."""
    drift = cfg.scenario.drift
    return None if drift is None else first_drift_round(drift.round, cfg.num_rounds)


def first_drift_round(configured: int | None, num_rounds: int) -> int:
    """``scenario.drift.round`` as configured, or half-way (``num_rounds // 2 + 1``) when null."""
    return configured if configured is not None else num_rounds // 2 + 1


@lru_cache(maxsize=32)
def drifting_clients(seed: int, num_clients: int, fraction: float) -> tuple[int, ...]:
    """The clients whose data drift, sorted: ``round(fraction * num_clients)`` of them, at least one.

    Drawn without replacement by a generator seeded by (seed, "drift").
    """
    n = min(num_clients, max(1, round(fraction * num_clients)))
    chosen = numpy_rng(seed, "drift").choice(num_clients, size=n, replace=False)
    return tuple(sorted(int(c) for c in chosen))


def drift_source(cfg: RunConfig, partition_id: int) -> int:
    """The client whose tasks client ``partition_id`` takes when its data drift (``offset`` clients on)."""
    drift = cfg.scenario.drift
    if drift is None:
        raise ValueError("drift_source needs scenario.drift")
    offset = cfg.scenario.tasks_per_client if drift.offset is None else drift.offset
    return (partition_id + offset) % cfg.num_clients


def is_drifted(cfg: RunConfig, partition_id: int, server_round: int) -> bool:
    """Whether client ``partition_id`` holds its drifted data in ``server_round`` (always False without drift)."""
    first = drift_round(cfg)
    if first is None or server_round < first:
        return False
    assert cfg.scenario.drift is not None
    return partition_id in drifting_clients(cfg.seed, cfg.num_clients, cfg.scenario.drift.fraction)


def client_tasks(cfg: RunConfig, partition_id: int) -> tuple[str, ...]:
    """Tasks client ``partition_id`` trains on (its "own" tasks)."""
    return tuple(train_counts(cfg, partition_id))


def seen_tasks(cfg: RunConfig) -> tuple[str, ...]:
    """Tasks that at least one client trains on, in ``data.tasks`` order (with node-local data: all of them)."""
    if cfg.data.source == "node":
        return tuple(cfg.data.tasks)
    held = {task for client in range(cfg.num_clients) for task in client_tasks(cfg, client)}
    return tuple(t for t in cfg.data.tasks if t in held)


def unseen_tasks(cfg: RunConfig) -> tuple[str, ...]:
    """Tasks no client trains on: the held-out ones and any a window scenario leaves uncovered."""
    seen = set(seen_tasks(cfg))
    return tuple(t for t in cfg.data.tasks if t not in seen)


@lru_cache(maxsize=32)
def dirichlet_counts(
    seed: int, num_clients: int, tasks: tuple[str, ...], alpha: float, per_client: int, min_examples: int
) -> np.ndarray:
    """Examples of each task per client, ``[num_clients, len(tasks)]``, split by Dirichlet(alpha).

    The federation holds ``num_clients * per_client`` examples, spread evenly
    over tasks; each task's share is split over clients in proportions drawn
    from Dirichlet(alpha), seeded by (seed, draw). Draws that leave a client
    with fewer than ``min_examples`` are replaced by the next one.
    """
    totals = task_shares(num_clients * per_client, len(tasks))
    for draw in range(MAX_DRAWS):
        rng = numpy_rng(seed, "dirichlet", draw)
        columns = []
        for total in totals:
            p = rng.dirichlet(np.full(num_clients, alpha))
            columns.append(rng.multinomial(total, p / p.sum()))
        counts = np.stack(columns, axis=1)
        if counts.sum(axis=1).min() >= min_examples:
            counts.setflags(write=False)
            return counts
    raise ConfigError(
        f"no Dirichlet(alpha={alpha:g}) split in {MAX_DRAWS} draws gives each of the {num_clients} clients "
        f"scenario.min_train_examples={min_examples} training examples; raise scenario.alpha or "
        "scenario.train_examples_per_client, or lower scenario.min_train_examples or num_clients"
    )


def task_shares(total: int, n_tasks: int) -> list[int]:
    """Split ``total`` examples as evenly as possible over ``n_tasks`` tasks."""
    base, extra = divmod(total, n_tasks)
    return [base + (1 if j < extra else 0) for j in range(n_tasks)]


def pool_sizes(cfg: RunConfig) -> dict[str, int]:
    """Training-pool size of every task (``scenario.shares=pool``); sources without finite pools are refused."""
    source = make_source(cfg.data, cfg.seed)
    size = getattr(source, "size", None)
    if size is None:
        raise ConfigError(f"scenario.shares=pool needs finite task pools; data.source={cfg.data.source} has none")
    return {task: int(size(task, "train")) for task in cfg.data.tasks}


def proportional_shares(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` examples in proportion to ``weights`` (largest remainders; each task gets at least one)."""
    n = len(weights)
    weight_sum = sum(weights)
    if weight_sum <= 0 or total < n:
        return task_shares(total, n)
    exact = [(total - n) * w / weight_sum for w in weights]  # one example each first, the rest in proportion
    shares = [1 + int(x) for x in exact]
    by_remainder = sorted(range(n), key=lambda j: (-(exact[j] - int(exact[j])), j))
    for j in by_remainder[: total - sum(shares)]:
        shares[j] += 1
    return shares


def build_client_data(cfg: RunConfig, partition_id: int, server_round: int = 0) -> ClientData:
    """Build the partition of client ``partition_id`` in ``server_round`` (pure function of the config and round).

    The round matters only under ``scenario.drift``: a drifting client from
    :func:`drift_round` on trains and tests on its new tasks.
    """
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id {partition_id} is outside [0, {cfg.num_clients}) (num_clients)")
    source = make_source(cfg.data, cfg.seed)
    drifted = is_drifted(cfg, partition_id, server_round)
    counts = train_counts(cfg, partition_id, drifted)
    own = tuple(counts)
    train: list[Example] = []
    for task, share in counts.items():
        positions = stream_positions(cfg, source, task, "train", partition_id, share, drifted)
        train += source.examples(task, "train", positions)
    test: list[Example] = []
    for task in tested_tasks(cfg, own):
        count = test_counts(cfg, task)[partition_id]
        test += source.examples(task, "test", stream_positions(cfg, source, task, "test", partition_id, count))
    data = ClientData(
        partition_id=partition_id,
        tasks=own,
        train=tuple(train),
        test=tuple(test),
        metrics={task: source.metric(task) for task in tested_tasks(cfg, own)},
    )
    check_cluster_samples(cfg, data)
    return data


def tested_tasks(cfg: RunConfig, own: Sequence[str]) -> tuple[str, ...]:
    """Tasks a client holding ``own`` is tested on, as ``eval.scope`` says."""
    if cfg.eval.scope == "local":
        return tuple(own)
    if cfg.eval.scope == "covered":
        covered = set(seen_tasks(cfg)) | set(cfg.scenario.unseen_tasks)
        return tuple(t for t in cfg.data.tasks if t in covered)
    if cfg.eval.scope == "claims":
        claims, trained = cfg.scenario.claims, set(seen_tasks(cfg))
        cells = {
            "own": set(own),
            "other_clients": trained - set(own),
            "held_out": set(cfg.scenario.unseen_tasks) | (set(cfg.data.tasks) - trained),
        }
        wanted = set().union(*(cells[claim] for claim in claims))
        return tuple(t for t in cfg.data.tasks if t in wanted)
    return tuple(cfg.data.tasks)


def test_counts(cfg: RunConfig, task: str) -> list[int]:
    """Test examples of ``task`` that each client holds, by partition id.

    ``scenario.test_items_per_cell`` deals a number of items per reported cell
    over the clients of that cell: the task's holders (own-task scores), the
    others (other clients' tasks) or, where no client trains it, everyone
    (held-out tasks); otherwise every client holds ``test_examples_per_task``.
    """
    scenario = cfg.scenario
    per_cell = scenario.test_items_per_cell
    if per_cell is None:
        return [scenario.test_examples_per_task] * cfg.num_clients
    holds = [task in train_counts(cfg, c) for c in range(cfg.num_clients)]
    holders = sum(holds)
    others = cfg.num_clients - holders
    return [-(-per_cell // (holders if held else others or cfg.num_clients)) for held in holds]


def stream_positions(
    cfg: RunConfig,
    source: DataSource,
    task: str,
    split: str,
    partition_id: int,
    count: int,
    drifted: bool = False,
) -> Sequence[int]:
    """Positions of ``task``'s ``split`` stream that client ``partition_id`` reads.

    An unbounded source (the generator) gives client i the range starting at
    i * STRIDE. A finite one (with ``size``) lays clients out one after the
    other, so clients hold disjoint examples while the pool lasts; beyond it
    positions wrap around (and are logged once), so clients then share some.
    The drifted training data of drifting clients (``drifted``) come after
    what every client reads before the drift, laid out alike.
    """
    size = getattr(source, "size", None)
    if size is None:
        offset = partition_id * STRIDE
        return range(offset, offset + count)
    if split == "train":
        start = sum(train_counts(cfg, c).get(task, 0) for c in range(partition_id))
        needed = sum(train_counts(cfg, c).get(task, 0) for c in range(cfg.num_clients))
        if cfg.scenario.drift is not None:
            movers = drifting_clients(cfg.seed, cfg.num_clients, cfg.scenario.drift.fraction)
            moved = [train_counts(cfg, c, drifted=True).get(task, 0) for c in movers]
            if drifted:
                start = needed + sum(n for c, n in zip(movers, moved, strict=True) if c < partition_id)
            needed += sum(moved)
    elif cfg.scenario.test_items_per_cell is None:
        start = partition_id * count
        needed = cfg.num_clients * count
    else:
        counts = test_counts(cfg, task)
        start, needed = sum(counts[:partition_id]), sum(counts)
    available = size(task, split)
    if needed > available:
        _warn_once(task, split, needed, available)
    return [(start + j) % available for j in range(count)]


_warned: set[tuple[str, str, int, int]] = set()


def _warn_once(task: str, split: str, needed: int, available: int) -> None:
    if (task, split, needed, available) not in _warned:
        _warned.add((task, split, needed, available))
        log.warning(
            "task %r: the federation reads %d %s examples but the pool holds %d; clients share some", task,
            needed, split, available,
        )  # fmt: skip


def check_cluster_samples(cfg: RunConfig, data: ClientData) -> None:
    """Refuse a client whose distinct training samples are fewer than the clusters it must form.

    Methods that k-means a client's own samples say how many they need
    (:meth:`~fedrouter_app.registry.MethodConfig.min_distinct_samples`); with a
    finite source a client can hold repeats of few rows, which k-means cannot
    split into that many clusters, so this names the tasks and their origin
    instead of failing later.
    """
    needed, setting = cfg.method.min_distinct_samples()
    distinct = len({(ex.instruction, ex.response) for ex in data.train})
    if distinct < needed:
        per_task = {t: len({ex.instruction for ex in data.train if ex.task == t}) for t in data.tasks}
        detail = ", ".join(f"{t!r}: {n}" for t, n in per_task.items())
        raise TooFewSamplesError(
            f"data.source={cfg.data.source} ({', '.join(t.path for t in cfg.data.tables) or cfg.data.source}): "
            f"client {data.partition_id} holds {distinct} distinct training samples ({detail}), fewer than "
            f"{setting}; add rows to these tasks or lower {setting.split('=')[0]}"
        )
