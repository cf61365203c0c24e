"""Clustering helpers shared by methods: k-means, nearest centroids, matching, scores.

k-means is scikit-learn's, seeded by the caller; distances are Euclidean.
Global clustering must stay fast with thousands of clients: k-means++ seeding
costs ``O(n k d log k)`` and dominates Lloyd's iterations for large ``n``, so
above :data:`SEEDING_SAMPLE` points it seeds from a seeded subsample and then
runs Lloyd's iterations over every point, so the cost of seeding stops growing
with the number of clients. Below that size the result is exactly scikit-learn's plain k-means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedrouter_app.seeding import numpy_rng

# Points above which k-means++ seeds from a subsample of this size (10,000 local
# centroids of a 576-wide model then cluster in well under a second on 2 cores).
SEEDING_SAMPLE = 2048


def kmeans(points: np.ndarray, k: int, seed: int, init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means into ``k`` clusters; returns ``(centroids, labels)``.

    ``init`` warm-starts from given centroids (one run); otherwise k-means++
    with ``random_state`` from ``seed``, seeded on a subsample when there are
    more than :data:`SEEDING_SAMPLE` points (see the module docstring).

    Raises
    ------
    ValueError
        If there are fewer points than clusters.
    """
    points = np.asarray(points, dtype=np.float64)
    if k < 1 or len(points) < k:
        raise ValueError(f"cannot make {k} clusters from {len(points)} points")
    if init is None and len(points) > SEEDING_SAMPLE:
        init = subsample_seeding(points, k, seed)
    # scikit-learn and SciPy are imported on use: every ClientApp process of a deployment imports this
    # module, and they are a fifth of its start-up.
    from sklearn.cluster import KMeans

    model = KMeans(
        n_clusters=k,
        init="k-means++" if init is None else np.asarray(init, dtype=np.float64),
        n_init="auto" if init is None else 1,
        random_state=seed % (2**32),
    ).fit(points)
    return model.cluster_centers_.astype(np.float32), model.labels_.astype(np.int64)


def subsample_seeding(points: np.ndarray, k: int, seed: int, sample: int = SEEDING_SAMPLE) -> np.ndarray:
    """k-means++ initial centroids chosen among a seeded subsample of ``sample`` points.

    The subsample and the seeding both derive from ``seed``, so the result does
    not depend on the order in which anything ran.
    """
    rows = numpy_rng(seed, "kmeans-seeding-sample").choice(len(points), size=min(sample, len(points)), replace=False)
    from sklearn.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(points[np.sort(rows)], k, random_state=seed % (2**32))
    return centers


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n_points, n_centroids)`` squared Euclidean distances."""
    p = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    return np.maximum((p**2).sum(1)[:, None] - 2 * p @ c.T + (c**2).sum(1)[None, :], 0.0)


def unit_rows(points: np.ndarray) -> np.ndarray:
    """Each row scaled to L2 norm 1, in float64 (an all-zero row stays zero)."""
    points = np.asarray(points, dtype=np.float64)
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return np.divide(points, norms, out=np.zeros_like(points), where=norms > 0)


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
    from scipy.optimize import linear_sum_assignment

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
    """ARI and purity of a clustering given as cluster -> true label -> count.

    Both come from the contingency table itself, in time linear in its cells,
    never from one entry per sample: the server scores clusterings of
    thousands of clients, each holding many samples.
    """
    labels = sorted({label for counts in table.values() for label in counts})
    counts = np.array([[int(row.get(label, 0)) for label in labels] for row in table.values()], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return {"ari": float("nan"), "purity": float("nan")}
    purity = int(counts.max(axis=1).sum()) / total
    return {"ari": ari_from_contingency(counts), "purity": float(purity)}


def ari_from_contingency(counts: np.ndarray) -> float:
    """Adjusted Rand index of a (clusters x labels) contingency table of counts.

    The pair-counting form scikit-learn's ``adjusted_rand_score`` uses, in
    Python integers (no overflow), so the value is the same.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    squares = int((counts**2).sum())
    # Pairs in the same cluster and the same label (x2), and those sharing only one of the two.
    both = squares - n
    same_cluster = int((counts.sum(axis=1) ** 2).sum()) - squares
    same_label = int((counts.sum(axis=0) ** 2).sum()) - squares
    neither = n * n - same_cluster - same_label - squares
    if same_cluster == 0 and same_label == 0:
        return 1.0
    return float(
        2.0
        * (both * neither - same_label * same_cluster)
        / ((both + same_label) * (same_label + neither) + (both + same_cluster) * (same_cluster + neither))
    )


def majority(table: Mapping[int, Mapping[str, int]]) -> dict[int, str]:
    """The most frequent true label of each cluster (ties broken by name)."""
    return {k: min(counts, key=lambda t: (-counts[t], t)) for k, counts in table.items() if counts}
