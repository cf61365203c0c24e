"""What a FedRouter client shares about its data: a minimum cluster size and noisy centroids.

A local centroid is the mean of the embeddings of a client's private texts. Two
options bound what it reveals:

- **Minimum cluster size.** A cluster with fewer than ``m`` samples is merged
  into its nearest other cluster before registration (repeatedly, smallest
  first), so every shared centroid summarises at least ``m`` samples and the
  client trains one adapter per merged cluster. A client with fewer than ``m``
  samples in all shares nothing and cannot take part.
- **Gaussian noise.** Each sample embedding is clipped to L2 norm ``C``, so
  adding or removing one sample moves a cluster's sum by at most ``C``; the
  shared centroid is the clipped mean plus Gaussian noise of standard deviation
  ``z * C / n`` per coordinate (``n``: the cluster's size). That is the Gaussian
  mechanism with noise multiplier ``z`` on the cluster's sum, released divided
  by ``n``: the same calibration as DP-FedAvg (Flower's ``compute_stdv`` with
  ``n`` in place of the number of clients), reused from Flower here. The
  cluster sizes themselves are shared without noise (the server weighs by
  them), so the guarantee is for the centroid given its size.

The noise is drawn once per client, from (run seed, client), and kept in the
client's state: a client that registers again sends the same release, so
repeating a registration reveals nothing new (a draw per round would let the
server average the noise away).
"""

from __future__ import annotations

import numpy as np

from fedrouter_app.compat.flwr_helpers import compute_stdv
from fedrouter_app.ml.clustering import squared_distances


def merge_small_clusters(embeddings: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with every cluster of fewer than ``min_size`` samples merged into its nearest other cluster.

    The smallest cluster (lowest label on ties) goes first, into the cluster
    whose mean is nearest to its own; labels are renumbered ``0 .. k' - 1`` in
    the order of the clusters' first label. Deterministic: no random choice.

    Raises
    ------
    ValueError
        If there are fewer than ``min_size`` samples in all.
    """
    if len(labels) < min_size:
        raise ValueError(
            f"{len(labels)} training samples are fewer than method.min_cluster_size={min_size}: "
            "this client can share no centroid"
        )
    labels = np.asarray(labels, dtype=np.int64).copy()
    while True:
        present = np.unique(labels)
        sizes = np.array([(labels == j).sum() for j in present])
        if len(present) == 1 or sizes.min() >= min_size:
            break
        small = present[int(np.argmin(sizes))]
        others = present[present != small]
        means = np.stack([embeddings[labels == j].mean(axis=0) for j in others])
        target = others[int(squared_distances(embeddings[labels == small].mean(axis=0)[None], means).argmin())]
        labels[labels == small] = target
    _, renumbered = np.unique(labels, return_inverse=True)
    return renumbered.astype(np.int64)


def cluster_means(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean embedding of each cluster ``0 .. max(labels)`` (float32)."""
    return np.stack([embeddings[labels == j].mean(axis=0) for j in range(int(labels.max()) + 1)]).astype(np.float32)


def clip_rows(points: np.ndarray, clip: float) -> np.ndarray:
    """Each row scaled down to L2 norm at most ``clip`` (rows already within it are unchanged)."""
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return points * np.minimum(1.0, clip / np.maximum(norms, 1e-12))


def noisy_centroids(
    embeddings: np.ndarray, labels: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Clipped cluster means plus Gaussian noise of std ``noise_multiplier * clip / size`` (float32)."""
    clipped = clip_rows(np.asarray(embeddings, dtype=np.float64), clip)
    out = []
    for j in range(int(labels.max()) + 1):
        members = clipped[labels == j]
        std = compute_stdv(noise_multiplier, clip, len(members))
        out.append(members.mean(axis=0) + rng.normal(0.0, std, size=members.shape[1]))
    return np.stack(out).astype(np.float32)
