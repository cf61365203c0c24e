"""Routing test samples of unseen tasks to task adapters by frozen-base centroids.

For methods that know the task of every training sample and hold one adapter
per task (or per cluster of tasks): each client embeds its training
instructions once with the frozen base model (as FedRouter does, see
:mod:`fedrouter_app.ml.embedding`) and shares the mean embedding of each of its
tasks; the server pools them into one centroid per adapter, weighted by the
number of samples behind each; a client sends each test sample of a task it
never trained on to the adapter of the nearest centroid.

Routing counts travel as FedRouter's do, ``route.global.<own|other>.<task>.<target>``
(global: every adapter is a candidate), so one parser reads them all.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrouter_app.federation.centroid_privacy import cluster_means
from fedrouter_app.federation.records import InvalidReplyError, read_count
from fedrouter_app.ml.clustering import nearest
from fedrouter_app.ml.embedding import embed_texts

if TYPE_CHECKING:
    from fedrouter_app.client.client_env import ClientEnv
    from fedrouter_app.data.example import Example

CENTROIDS = "centroids"  # record of centroids in replies and instructions
ROUTE_PREFIX = "route.global."

T = TypeVar("T")


def _digest(examples: Sequence[Example], tasks: Sequence[str] = ()) -> np.ndarray:
    """A fingerprint of the examples (and task order) a stored value was computed from."""
    text = "\x1f".join([*tasks, "\x1e", *(f"{ex.task}\x1d{ex.instruction}" for ex in examples)])
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8).copy()


def _stored(env: ClientEnv, name: str, digest: np.ndarray) -> np.ndarray | None:
    record = env.state.array_records.get(name)
    if record is None or not np.array_equal(record["digest"].numpy(), digest):
        return None
    return record["value"].numpy()


def _store(env: ClientEnv, name: str, digest: np.ndarray, value: np.ndarray) -> None:
    env.state[name] = ArrayRecord(
        {"digest": Array(digest), "value": Array(np.ascontiguousarray(value, dtype=np.float32))}
    )


def _embed(env: ClientEnv, examples: Sequence[Example]) -> np.ndarray:
    return embed_texts(
        env.model(),
        [ex.instruction for ex in examples],
        batch_size=env.cfg.eval.batch_size,
        by_length=env.cfg.speed.eval_batching,
    )


def stored_embeddings(env: ClientEnv, name: str, examples: Sequence[Example]) -> np.ndarray:
    """Frozen-base embeddings of the examples' instructions, kept in ``context.state`` under ``name``.

    Computed once for a given list of examples (again only if the client's
    data changes, e.g. under a scenario drift).
    """
    digest = _digest(examples)
    if (stored := _stored(env, name, digest)) is not None:
        return stored
    embeddings = _embed(env, examples)
    _store(env, name, digest, embeddings)
    return embeddings


def own_task_centroids(env: ClientEnv, name: str) -> np.ndarray:
    """``(len(env.data.tasks), hidden)``: the mean embedding of each own task's training samples, in task order.

    Computed once and kept in ``context.state`` under ``name`` (the training
    embeddings themselves are not kept); again only if the client's data
    changes. Every own task has training samples.
    """
    train, tasks = env.data.train, env.data.tasks
    digest = _digest(train, tasks)
    if (stored := _stored(env, name, digest)) is not None:
        return stored
    labels = np.array([tasks.index(ex.task) for ex in train], dtype=np.int64)
    centroids = cluster_means(_embed(env, train), labels)
    _store(env, name, digest, centroids)
    return centroids


def nearest_targets(points: np.ndarray, centroids: np.ndarray, targets: Sequence[T]) -> list[T]:
    """For each point, the target of its nearest centroid (row i of ``centroids`` stands for ``targets[i]``)."""
    if len(centroids) != len(targets):
        raise ValueError(f"{len(centroids)} centroids for {len(targets)} routing targets")
    if len(points) == 0:
        return []
    return [targets[int(i)] for i in nearest(points, centroids)]


def pooled_centroids(items: Iterable[tuple[Hashable, np.ndarray, float]]) -> dict[Any, np.ndarray]:
    """Per group, the weighted mean of its centroids, from ``(group, centroid, weight)`` items (float32)."""
    sums: dict[Hashable, np.ndarray] = {}
    weights: dict[Hashable, float] = defaultdict(float)
    for group, centroid, weight in items:
        value = np.asarray(centroid, dtype=np.float64) * float(weight)
        sums[group] = sums[group] + value if group in sums else value
        weights[group] += float(weight)
    return {group: (total / weights[group]).astype(np.float32) for group, total in sums.items()}


def route_metric(task: str, target: int, own: bool = False) -> str:
    """The metric counting test samples of ``task`` routed to ``target``."""
    return f"{ROUTE_PREFIX}{'own' if own else 'other'}.{task}.{target}"


def parse_route_metric(key: str) -> tuple[str, str, int] | None:
    """``route.global.<own|other>.<task>.<target>`` as ``(whose, task, target)``; None if malformed."""
    if not key.startswith(ROUTE_PREFIX):
        return None
    whose, _, rest = key.removeprefix(ROUTE_PREFIX).partition(".")
    task, _, target = rest.rpartition(".")
    if whose not in ("own", "other") or not task or not target.isdigit():
        return None
    return whose, task, int(target)


def check_route_metrics(metrics: Mapping[str, float], tasks: Sequence[str], n_targets: int) -> None:
    """Every ``route.*`` metric names a run task and a target below ``n_targets``, with a count.

    Raises
    ------
    InvalidReplyError
        For the first metric that does not.
    """
    for key in metrics:
        if not key.startswith("route."):
            continue
        parsed = parse_route_metric(key)
        if parsed is None or parsed[1] not in tasks or not 0 <= parsed[2] < n_targets:
            raise InvalidReplyError(f"routing metric {key[:80]!r} names no run task and routing target")
        read_count(metrics, key)


def routing_summary(replies: Iterable[Mapping[str, float]], right: Mapping[int, str]) -> dict[str, Any]:
    """Confusion (true task -> target) of the routed samples and the share routed to their task's target.

    ``right`` maps a target to the task it stands for; samples of tasks no
    target stands for (held-out tasks) count in the confusion only. The
    shape is FedRouter's ``routing`` record, for one router mode (``global``),
    so reports read both alike.
    """
    confusion: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    covered = set(right.values())
    for metrics in replies:
        for key, value in metrics.items():
            parsed = parse_route_metric(key)
            if parsed is None:
                continue
            whose, task, target = parsed
            confusion[task][target] += int(value)
            if task in covered:
                hits[whose][0] += int(value) * (right.get(target) == task)
                hits[whose][1] += int(value)
    return {
        "global": {
            **{f"accuracy_{whose}": h[0] / h[1] for whose, h in sorted(hits.items()) if h[1]},
            "confusion": {task: {str(k): n for k, n in sorted(row.items())} for task, row in sorted(confusion.items())},
        }
    }
