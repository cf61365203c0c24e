"""Clustering helpers: the exact small path, the subsampled-seeding path for many points, fast scores."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from fedrouter_app.ml.clustering import (
    SEEDING_SAMPLE,
    ari_from_contingency,
    kmeans,
    scores_from_counts,
    subsample_seeding,
)


def blobs(n: int, k: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    truth = rng.integers(0, k, size=n)
    return (centres[truth] + rng.normal(size=(n, dim)) * 0.1).astype(np.float32), truth


def test_small_inputs_give_exactly_sklearns_kmeans():
    points, _ = blobs(300, 4, 8)
    centroids, labels = kmeans(points, 4, seed=7)
    reference = KMeans(n_clusters=4, n_init="auto", random_state=7).fit(points.astype(np.float64))
    np.testing.assert_array_equal(labels, reference.labels_)
    np.testing.assert_allclose(centroids, reference.cluster_centers_.astype(np.float32))


def test_many_points_seed_on_a_subsample_and_still_find_the_clusters():
    points, truth = blobs(SEEDING_SAMPLE * 3, 16, 32)
    centroids, labels = kmeans(points, 16, seed=3)
    assert centroids.shape == (16, 32)
    assert adjusted_rand_score(truth, labels) == 1.0
    again, labels_again = kmeans(points, 16, seed=3)
    np.testing.assert_array_equal(labels, labels_again)
    np.testing.assert_array_equal(centroids, again)


def test_subsample_seeding_picks_k_of_the_points_reproducibly():
    points, _ = blobs(5000, 5, 4)
    seeds = subsample_seeding(points.astype(np.float64), 5, seed=1)
    assert seeds.shape == (5, 4)
    rows = {tuple(p) for p in points.astype(np.float64)}
    assert all(tuple(s) in rows for s in seeds)
    np.testing.assert_array_equal(seeds, subsample_seeding(points.astype(np.float64), 5, seed=1))
    assert not np.array_equal(seeds, subsample_seeding(points.astype(np.float64), 5, seed=2))


@pytest.mark.parametrize("seed", range(20))
def test_ari_from_the_table_equals_sklearns(seed):
    rng = np.random.default_rng(seed)
    truth, pred = rng.integers(0, rng.integers(1, 6), 200), rng.integers(0, rng.integers(1, 6), 200)
    if seed % 4 == 0:
        pred = truth.copy()  # full agreement, a special case
    table = np.zeros((pred.max() + 1, truth.max() + 1), dtype=np.int64)
    np.add.at(table, (pred, truth), 1)
    assert ari_from_contingency(table) == pytest.approx(adjusted_rand_score(truth, pred), abs=1e-12)


def test_scores_from_counts():
    scores = scores_from_counts({0: {"a": 3, "b": 1}, 1: {"b": 4}})
    truth = ["a"] * 3 + ["b"] * 5
    pred = [0] * 4 + [1] * 4
    assert scores["purity"] == pytest.approx(7 / 8)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(truth, pred))
    assert np.isnan(scores_from_counts({0: {}})["ari"])
