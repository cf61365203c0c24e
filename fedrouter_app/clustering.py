"""Clustering helpers shared by methods: k-means, nearest centroids, matching, scores.

k-means is scikit-learn's, seeded by the caller; distances are Euclidean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score


def kmeans(points: np.ndarray, k: int, seed: int, init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means into ``k`` clusters; returns ``(centroids, labels)``.

    ``init`` warm-starts from given centroids (one run); otherwise k-means++
    with ``random_state`` from ``seed``.

    Raises
    ------
    ValueError
        If there are fewer points than clusters.
    """
    points = np.asarray(points, dtype=np.float64)
    if k < 1 or len(points) < k:
        raise ValueError(f"cannot make {k} clusters from {len(points)} points")
    model = KMeans(
        n_clusters=k,
        init="k-means++" if init is None else np.asarray(init, dtype=np.float64),
        n_init="auto" if init is None else 1,
        random_state=seed % (2**32),
    ).fit(points)
    return model.cluster_centers_.astype(np.float32), model.labels_.astype(np.int64)


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n_points, n_centroids)`` squared Euclidean distances."""
    p = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    return np.maximum((p**2).sum(1)[:, None] - 2 * p @ c.T + (c**2).sum(1)[None, :], 0.0)


def nearest(points: np.ndarray, centroids: np.ndarray, candidates: Sequence[int] | None = None) -> np.ndarray:
    """Index of the nearest centroid for each point, optionally among ``candidates`` only."""
    if candidates is None:
        return squared_distances(points, centroids).argmin(axis=1)
    allowed = np.asarray(sorted(set(candidates)), dtype=np.int64)
    return allowed[squared_distances(points, centroids[allowed]).argmin(axis=1)]


def match_clusters(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """For each new centroid, the index of the old one it continues (Hungarian, on distances).

    Returns ``ids`` with ``ids[new_index] = old_index``. When there are more new
    centroids than old ones, the unmatched new ones get fresh indices
    ``len(old), len(old) + 1, ...``.
    """
    rows, cols = linear_sum_assignment(squared_distances(new, old))
    ids = np.full(len(new), -1, dtype=np.int64)
    ids[rows] = cols
    unmatched = np.flatnonzero(ids < 0)
    ids[unmatched] = len(old) + np.arange(len(unmatched))
    return ids


def contingency(labels_true: Sequence[str], labels_pred: Sequence[int]) -> dict[int, dict[str, int]]:
    """Counts of true labels inside each predicted cluster."""
    table: dict[int, dict[str, int]] = {}
    for truth, pred in zip(labels_true, labels_pred, strict=True):
        row = table.setdefault(int(pred), {})
        row[truth] = row.get(truth, 0) + 1
    return table


def scores_from_counts(table: Mapping[int, Mapping[str, int]]) -> dict[str, float]:
    """ARI and purity of a clustering given as cluster -> true label -> count."""
    truth, pred = [], []
    for cluster, counts in table.items():
        for label, n in counts.items():
            truth += [label] * int(n)
            pred += [cluster] * int(n)
    total = len(truth)
    if total == 0:
        return {"ari": float("nan"), "purity": float("nan")}
    purity = sum(max(counts.values()) for counts in table.values() if counts) / total
    return {"ari": float(adjusted_rand_score(truth, pred)), "purity": float(purity)}


def majority(table: Mapping[int, Mapping[str, int]]) -> dict[int, str]:
    """The most frequent true label of each cluster (ties broken by name)."""
    return {k: min(counts, key=lambda t: (-counts[t], t)) for k, counts in table.items() if counts}
