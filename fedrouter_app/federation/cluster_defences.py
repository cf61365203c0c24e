"""FedRouter's defences of its global clusters against malicious registrations.

- ``method.max_client_share``: a client's weight in a global cluster's mean is
  capped at that share of the cluster's total weight (:func:`capped_weights`),
  so inflated cluster sizes (``attack.kind=inflate_sizes``) buy at most that
  share.
- ``method.centroid_outlier_threshold``: a registered centroid far from every
  global cluster is refused (:func:`outliers`): its distance to the nearest
  global cluster mean, computed without it (:func:`leave_one_out_distances`),
  over the median such distance of all registered centroids, above the
  threshold. Leaving the centroid out matters: k-means gives a far-away
  centroid a global cluster of its own, at distance zero from it.

Pure functions on arrays; the strategy (``strategies/fedrouter/clustering.py``) applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def capped_weights(weights: Sequence[float], max_share: float) -> list[float]:
    """``weights`` with each capped at ``max_share`` of the capped total; uncapped ones unchanged.

    The cap ``c`` is the largest value for which ``min(w, c) / sum(min(w_i, c))
    <= max_share`` for every client (water-filling from the largest weight
    down). Where no cap can satisfy it (fewer than ``1 / max_share`` clients
    with positive weight), every positive weight becomes the smallest one: the
    most even split there is (a sole client keeps its weight). ``max_share >= 1`` returns the weights unchanged.

    Parameters
    ----------
    weights : sequence of float
        Non-negative weights, one per client of one aggregate.
    max_share : float
        Largest share of the total one client may hold, in ``(0, 1]``.
    """
    values = [float(w) for w in weights]
    total = sum(values)
    if max_share >= 1 or total <= 0 or max(values) <= max_share * total:
        return values
    order = sorted(range(len(values)), key=lambda i: -values[i])
    rest = total
    for m in range(1, len(values)):
        rest -= values[order[m - 1]]  # the weights of the clients below the m largest
        if max_share * m >= 1:
            break
        cap = max_share * rest / (1 - max_share * m)  # c = share * (rest + m * c)
        if cap > 0 and values[order[m]] <= cap <= values[order[m - 1]]:
            return [min(v, cap) for v in values]
    smallest = min(v for v in values if v > 0)
    return [smallest if v > 0 else 0.0 for v in values]


def leave_one_out_distances(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest cluster mean, its own cluster's mean computed without it.

    A point alone in its cluster is measured against the other clusters only;
    a point alone in the data set gets 0.
    """
    points = np.asarray(points, np.float64)
    labels = np.asarray(labels, np.int64)
    k = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, points.shape[1]))
    np.add.at(sums, labels, points)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    distances = np.linalg.norm(points[:, None, :] - means[None, :, :], axis=2)
    distances[:, counts == 0] = np.inf
    rows = np.arange(len(points))
    own_count = counts[labels]
    with np.errstate(invalid="ignore", divide="ignore"):
        own_mean = (sums[labels] - points) / (own_count - 1)[:, None]
    own = np.where(own_count > 1, np.linalg.norm(points - own_mean, axis=1), np.inf)
    distances[rows, labels] = own
    nearest = distances.min(axis=1) if k else np.zeros(len(points))
    return np.where(np.isfinite(nearest), nearest, 0.0)


def outliers(distances: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """Mask of the distances above ``threshold * scale`` (``scale``: the median distance of the registration).

    Nothing is an outlier with ``threshold`` 0 (the rule off) or a zero
    ``scale`` (more than half the centroids coincide with their cluster).
    """
    distances = np.asarray(distances, np.float64)
    if threshold <= 0 or scale <= 0:
        return np.zeros(distances.shape, dtype=bool)
    return distances > threshold * scale
