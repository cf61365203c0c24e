"""Client partitions: which tasks and examples each client holds.

Each client builds only its own partition, from its partition id and the run
config, so memory does not grow with the number of clients and the same code
serves simulation and deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrouter_app.data.example import Example, MetricKind
from fedrouter_app.data.sources import make_source
from fedrouter_app.settings import RunConfig

# Stream indices of different clients never overlap: client i uses
# [i * STRIDE, (i + 1) * STRIDE) of every task's stream.
STRIDE = 1_000_000


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


def client_tasks(cfg: RunConfig, partition_id: int) -> tuple[str, ...]:
    """Tasks of client ``partition_id``: a cyclic window over ``data.tasks``."""
    tasks = cfg.data.tasks
    m = cfg.scenario.tasks_per_client
    return tuple(tasks[(partition_id + j) % len(tasks)] for j in range(m))


def task_shares(total: int, n_tasks: int) -> list[int]:
    """Split ``total`` examples as evenly as possible over ``n_tasks`` tasks."""
    base, extra = divmod(total, n_tasks)
    return [base + (1 if j < extra else 0) for j in range(n_tasks)]


def build_client_data(cfg: RunConfig, partition_id: int) -> ClientData:
    """Build the partition of client ``partition_id`` (pure function of the config)."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id {partition_id} is outside [0, {cfg.num_clients}) (num_clients)")
    source = make_source(cfg.data, cfg.seed)
    own = client_tasks(cfg, partition_id)
    offset = partition_id * STRIDE
    train: list[Example] = []
    for task, share in zip(own, task_shares(cfg.scenario.train_examples_per_client, len(own)), strict=True):
        train += source.examples(task, "train", range(offset, offset + share))
    test_tasks = own if cfg.eval.scope == "local" else tuple(cfg.data.tasks)
    test: list[Example] = []
    for task in test_tasks:
        test += source.examples(task, "test", range(offset, offset + cfg.scenario.test_examples_per_task))
    return ClientData(
        partition_id=partition_id,
        tasks=own,
        train=tuple(train),
        test=tuple(test),
        metrics={task: source.metric(task) for task in test_tasks},
    )
