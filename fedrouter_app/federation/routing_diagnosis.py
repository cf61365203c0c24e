"""Why routed evaluation fails where it does, measured: every adapter on every test sample.

A router picks one of ``K`` adapters per sample. Whether a bad score comes from
the *choice* (another adapter would have done well) or from the *adapters*
(none of them does well, e.g. on a task no client trained on) cannot be told
from the routed score alone. The diagnosis scores each test sample under
every adapter, under their uniform average and under the bare base model,
and reports per task the mean score of each, the routed score and the
**oracle**: per sample, the best of the ``K`` adapters. ``oracle - routed`` is
the router's gap (what a perfect one-of-K router would gain);
``oracle`` against ``average`` and ``base`` says whether one-of-K routing can
help at all.

Reply metrics, one set per test task (all means over the task's samples):
``diag.<task>.n``, ``diag.<task>.cluster.<k>``, ``diag.<task>.average``,
``diag.<task>.base``, ``diag.<task>.oracle``, ``diag.<task>.routed``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedrouter_app.federation.records import InvalidReplyError, read_count

DIAG_PREFIX = "diag."
# Per-task means besides the per-adapter ones (diag.<task>.cluster.<k>).
SUMMARIES = ("average", "base", "oracle", "routed")


def diag_metric(task: str, what: str) -> str:
    """Key of one diagnosis value of ``task``: ``n``, ``cluster.<k>`` or one of :data:`SUMMARIES`."""
    return f"{DIAG_PREFIX}{task}.{what}"


def diagnosis_metrics(
    tasks: Sequence[str],
    clusters: np.ndarray,
    average: Sequence[float],
    base: Sequence[float],
    routed: Sequence[float],
) -> dict[str, float]:
    """Per-task means of every scoring of the test samples, and the oracle.

    Parameters
    ----------
    tasks : sequence of str
        The task of each test sample.
    clusters : array, shape (n_samples, K)
        Sample i's score under adapter k.
    average, base, routed : sequence of float
        Sample i's score under the uniform average of the adapters, the base
        model and the adapter the router chose.
    """
    clusters = np.asarray(clusters, dtype=np.float64).reshape(len(tasks), -1)
    if clusters.shape[1] == 0:
        raise ValueError("a diagnosis needs at least one adapter")
    # The oracle picks per sample, so per task it is at least every single adapter's mean.
    oracle = clusters.max(axis=1)
    columns = {"average": np.asarray(average), "base": np.asarray(base), "oracle": oracle, "routed": np.asarray(routed)}
    metrics: dict[str, float] = {}
    task_array = np.asarray(tasks, dtype=object)
    for task in sorted(set(tasks)):
        rows = task_array == task
        metrics[diag_metric(task, "n")] = int(rows.sum())
        for k in range(clusters.shape[1]):
            metrics[diag_metric(task, f"cluster.{k}")] = float(clusters[rows, k].mean())
        for name, values in columns.items():
            metrics[diag_metric(task, name)] = float(values[rows].mean())
    return metrics


def parse_diag_metric(key: str) -> tuple[str, str, int | None] | None:
    """``diag.<task>.<what>`` as ``(task, what, cluster)``; ``what`` is ``cluster`` with its index, or a name.

    None if malformed.
    """
    if not key.startswith(DIAG_PREFIX):
        return None
    body = key.removeprefix(DIAG_PREFIX)
    head, _, last = body.rpartition(".")
    if last.isdigit():
        task, _, kind = head.rpartition(".")
        return (task, "cluster", int(last)) if task and kind == "cluster" else None
    if head and last in ("n", *SUMMARIES):
        return head, last, None
    return None


def check_diagnosis_metrics(metrics: Mapping[str, float], tasks: Sequence[str], n_clusters: int) -> None:
    """Every ``diag.*`` metric names a run task and an existing adapter; scores in [0, 1], ``n`` a count.

    Raises
    ------
    InvalidReplyError
        For the first metric that does not (one line).
    """
    for key, value in metrics.items():
        if not key.startswith(DIAG_PREFIX):
            continue
        parsed = parse_diag_metric(key)
        if parsed is None or parsed[0] not in tasks or (parsed[2] is not None and not 0 <= parsed[2] < n_clusters):
            raise InvalidReplyError(
                f"diagnosis metric {key[:80]!r} is not diag.<task>.<n|cluster.<k>|{'|'.join(SUMMARIES)}> "
                "of a run task and cluster"
            )
        if parsed[1] == "n":
            read_count(metrics, key)
        elif not 0.0 <= value <= 1.0:
            raise InvalidReplyError(f"diagnosis metric {key[:80]!r} = {value!r} is outside [0, 1]")


def diagnosis_summary(replies: Iterable[Mapping[str, float]]) -> dict[str, Any]:
    """Per task, the sample-weighted means of every diagnosis value over replies, and ``oracle_gap``.

    ``oracle_gap`` is ``oracle - routed``. Empty when no reply carries a
    diagnosis. A reply's values of a task count only with its ``n``.
    """
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, float] = defaultdict(float)
    for metrics in replies:
        parsed = [(key, parse_diag_metric(key)) for key in metrics]
        counts = {p[0]: metrics[key] for key, p in parsed if p is not None and p[1] == "n"}
        for key, p in parsed:
            if p is None or p[1] == "n" or p[0] not in counts:
                continue
            what = p[1] if p[2] is None else f"cluster.{p[2]}"
            sums[p[0]][what] += counts[p[0]] * metrics[key]
        for task, n in counts.items():
            totals[task] += n
    out: dict[str, Any] = {}
    for task in sorted(sums):
        n = totals[task]
        means = {what: (s / n if n else math.nan) for what, s in sums[task].items()}
        clusters = sorted((int(w.split(".")[1]), v) for w, v in means.items() if w.startswith("cluster."))
        entry: dict[str, Any] = {"n": n, **{name: means.get(name, math.nan) for name in SUMMARIES}}
        entry["cluster"] = {str(k): v for k, v in clusters}
        entry["oracle_gap"] = entry["oracle"] - entry["routed"]
        out[task] = entry
    return out
