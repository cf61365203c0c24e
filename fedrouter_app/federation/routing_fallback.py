"""Routing that knows when it does not know: a label-free fallback for samples far from every centroid.

A hard router sends every test sample to the adapter of its nearest centroid,
even a sample of a task no adapter was trained on, which then lands on an
adapter specialised in another task. The rule here lets a client notice that
without labels: it calibrates a distance threshold on its *own training*
embeddings (the ``quantile`` of their distances to their nearest centroid,
i.e. how far in-distribution samples lie) and treats a test sample whose
nearest centroid is further than ``margin`` times that as unknown. Such a
sample is answered by a mixture of all the adapters instead of one:

* ``soft``: per-row weights ``softmax(-d_k / tau)`` over its distances ``d_k`` to
  the centroids, ``tau = temperature * threshold``;
* ``average``: weight ``1 / K`` on each of the ``K`` adapters.

Mixing happens in the LoRA output (``sum_k w_k B_k A_k x``), so the average is
the average of the adapters' weight updates ``B_k A_k``, not of their A and B
matrices. Samples within the threshold are routed as before.

Counts of routed and fallen-back test samples travel as reply metrics
``fallback.<own|other>.<task>.<routed|fallback>``; this module checks and
pools them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrouter_app.federation.records import InvalidReplyError, read_count
from fedrouter_app.ml.clustering import squared_distances

# none: hard routing only (no fallback view); the others name the mixture a fallen-back sample gets.
FALLBACK_MODES = ("none", "soft", "average")
FALLBACK_PREFIX = "fallback."
OUTCOMES = ("routed", "fallback")


@dataclass(frozen=True)
class Calibration:
    """What a client learned from its own training embeddings.

    Attributes
    ----------
    threshold : float
        The ``quantile`` of the training samples' nearest-centroid distances.
    median : float
        Their median (reported, so that a run shows how wide the tail is).
    """

    threshold: float
    median: float


def distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n_points, n_centroids)`` Euclidean distances, in float64."""
    return np.sqrt(squared_distances(points, centroids))


def calibrate(train_embeddings: np.ndarray, centroids: np.ndarray, quantile: float) -> Calibration:
    """The fallback threshold: the ``quantile`` of the training samples' distances to their nearest centroid.

    Computed on the client's own training samples against the centroids it
    will route by, so it measures how far samples the adapters *were* trained
    on lie, in the same embedding space and units as the test distances
    (whatever the model, the layer or centroid noise). NumPy's linear
    interpolation between order statistics; ``quantile=1`` is the largest.

    Raises
    ------
    ValueError
        With no training sample or no centroid: nothing to calibrate on.
    """
    if len(train_embeddings) == 0 or len(centroids) == 0:
        raise ValueError(
            f"cannot calibrate a fallback threshold from {len(train_embeddings)} samples and {len(centroids)} centroids"
        )
    nearest = distances(train_embeddings, centroids).min(axis=1)
    return Calibration(threshold=float(np.quantile(nearest, quantile)), median=float(np.median(nearest)))


def falls_back(test_distances: np.ndarray, threshold: float, margin: float = 1.0) -> np.ndarray:
    """Boolean per test sample: is its nearest centroid further than ``margin * threshold``?"""
    return np.asarray(test_distances).min(axis=1) > margin * threshold


def soft_weights(test_distances: np.ndarray, tau: float) -> np.ndarray:
    """Per row, ``softmax(-d_k / tau)`` over the centroids: nearer adapters weigh more, each row sums to 1.

    Shifted by the row's smallest distance before exponentiating, which
    leaves the softmax unchanged and keeps far samples (large ``d``) from
    underflowing to all zeros.
    """
    if tau <= 0:
        raise ValueError(f"the softmax temperature must be > 0, got {tau}")
    d = np.asarray(test_distances, dtype=np.float64)
    logits = -(d - d.min(axis=1, keepdims=True)) / tau
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def average_weights(n_rows: int, n_adapters: int) -> np.ndarray:
    """``1 / K`` for every adapter in every row: the mean of the adapters' weight updates."""
    return np.full((n_rows, n_adapters), 1.0 / n_adapters)


def fallback_weights(mode: str, test_distances: np.ndarray, tau: float) -> np.ndarray:
    """The mixing weights of fallen-back rows under ``mode`` (``soft`` or ``average``), ``(rows, K)``."""
    if mode == "soft":
        return soft_weights(test_distances, tau)
    if mode == "average":
        return average_weights(*np.shape(test_distances))
    raise ValueError(f"no mixture for fallback mode {mode!r}; valid: soft, average")


# Reply metrics.


def fallback_metric(task: str, outcome: str, own: bool) -> str:
    """The metric counting test samples of ``task`` that were ``routed`` or fell back (``fallback``)."""
    return f"{FALLBACK_PREFIX}{'own' if own else 'other'}.{task}.{outcome}"


def fallback_counts(tasks: Sequence[str], fell: Sequence[bool], own_tasks: Iterable[str]) -> dict[str, float]:
    """Per test task, how many samples were routed and how many fell back (both keys, zeros included)."""
    own = set(own_tasks)
    counts: dict[str, float] = {}
    for task, fallback in zip(tasks, fell, strict=True):
        for outcome in OUTCOMES:
            counts.setdefault(fallback_metric(task, outcome, task in own), 0.0)
        counts[fallback_metric(task, OUTCOMES[bool(fallback)], task in own)] += 1
    return counts


def parse_fallback_metric(key: str) -> tuple[str, str, str] | None:
    """``fallback.<own|other>.<task>.<routed|fallback>`` as ``(whose, task, outcome)``; None if malformed."""
    if not key.startswith(FALLBACK_PREFIX):
        return None
    whose, _, rest = key.removeprefix(FALLBACK_PREFIX).partition(".")
    task, _, outcome = rest.rpartition(".")
    if whose not in ("own", "other") or not task or outcome not in OUTCOMES:
        return None
    return whose, task, outcome


def check_fallback_metrics(metrics: Mapping[str, float], tasks: Sequence[str]) -> None:
    """Every ``fallback.*`` metric names a run task and an outcome, with a count.

    Raises
    ------
    InvalidReplyError
        For the first metric that does not (one line).
    """
    for key in metrics:
        if not key.startswith(FALLBACK_PREFIX):
            continue
        parsed = parse_fallback_metric(key)
        if parsed is None or parsed[1] not in tasks:
            raise InvalidReplyError(
                f"fallback metric {key[:80]!r} is not fallback.<own|other>.<task>.<routed|fallback> of a run task"
            )
        read_count(metrics, key)


def fallback_summary(replies: Iterable[Mapping[str, float]]) -> dict[str, Any]:
    """Routed and fallen-back samples pooled over replies: per task, and for own and other tasks.

    Empty when no reply carries fallback counts (the fallback is off).
    """
    per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_whose: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for metrics in replies:
        for key, value in metrics.items():
            parsed = parse_fallback_metric(key)
            if parsed is None:
                continue
            whose, task, outcome = parsed
            per_task[task][OUTCOMES.index(outcome)] += int(value)
            per_whose[whose][OUTCOMES.index(outcome)] += int(value)
    if not per_task:
        return {}

    def row(counts: list[int]) -> dict[str, float]:
        total = sum(counts)
        return {"routed": counts[0], "fallback": counts[1], "fallback_share": counts[1] / total if total else 0.0}

    return {
        "per_task": {task: row(c) for task, c in sorted(per_task.items())},
        **{whose: row(c) for whose, c in sorted(per_whose.items())},
    }
