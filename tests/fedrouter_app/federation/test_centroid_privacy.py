"""What FedRouter clients share: clusters below a minimum size merged away, noisy clipped centroids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrouter_app.federation.centroid_privacy import clip_rows, merge_small_clusters, noisy_centroids


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(1, 12), st.integers(0, 2**16))
def test_merging_leaves_no_cluster_below_the_minimum(labels, min_size, seed):
    labels = np.array(labels)
    points = np.random.default_rng(seed).standard_normal((len(labels), 3))
    if len(labels) < min_size:
        with pytest.raises(ValueError, match="min_cluster_size"):
            merge_small_clusters(points, labels, min_size)
        return
    merged = merge_small_clusters(points, labels, min_size)
    sizes = np.bincount(merged)
    assert sizes.min() >= min_size and sizes.sum() == len(labels)  # contiguous labels, nobody lost
    # Samples that shared a cluster still do: clusters are only ever merged.
    for j in np.unique(labels):
        assert len(np.unique(merged[labels == j])) == 1


def test_a_small_cluster_joins_its_nearest_neighbour():
    points = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [4.0]])
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    assert merge_small_clusters(points, labels, 2).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert merge_small_clusters(points, labels, 1).tolist() == labels.tolist()


def test_noise_is_calibrated_to_clip_over_cluster_size_and_seeded():
    points = np.random.default_rng(0).standard_normal((4000, 50)) * 10
    labels = np.repeat([0, 1], 2000)
    exact = noisy_centroids(points, labels, clip=2.0, noise_multiplier=0.0, rng=np.random.default_rng(1))
    assert np.linalg.norm(exact, axis=1).max() <= 2.0 + 1e-5  # means of clipped embeddings
    np.testing.assert_allclose(exact[0], clip_rows(points[:2000], 2.0).mean(axis=0), rtol=1e-5, atol=1e-6)
    noisy = noisy_centroids(points, labels, clip=2.0, noise_multiplier=500.0, rng=np.random.default_rng(1))
    assert (noisy - exact).std() == pytest.approx(500.0 * 2.0 / 2000, rel=0.15)
    again = noisy_centroids(points, labels, clip=2.0, noise_multiplier=500.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(noisy, again)
