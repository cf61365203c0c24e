"""FedRouter's defence rules on hand-made weights and centroids."""

from __future__ import annotations

import numpy as np
import pytest

from fedrouter_app.federation.cluster_defences import capped_weights, leave_one_out_distances, outliers


def shares(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def test_a_dominant_weight_is_capped_at_the_share_and_the_rest_unchanged():
    assert capped_weights([1000.0, 10.0, 10.0], 0.5) == [20.0, 10.0, 10.0]
    assert capped_weights([1000.0, 10.0], 0.5) == [10.0, 10.0]
    out = capped_weights([50.0, 40.0, 5.0, 5.0], 0.3)
    assert max(shares(out)) == pytest.approx(0.3) and out[2:] == [5.0, 5.0]


def test_weights_within_the_share_and_share_one_are_unchanged():
    assert capped_weights([100.0, 100.0, 1.0], 0.5) == [100.0, 100.0, 1.0]
    assert capped_weights([1000.0, 1.0], 1.0) == [1000.0, 1.0]


def test_where_no_cap_can_meet_the_share_the_weights_become_equal():
    assert capped_weights([1000.0, 10.0, 10.0], 0.2) == [10.0, 10.0, 10.0]
    assert capped_weights([7.0, 0.0], 0.5) == [7.0, 0.0]


@pytest.mark.parametrize("seed", range(20))
def test_capped_shares_never_exceed_the_bound_when_it_can_be_met(seed):
    rng = np.random.default_rng(seed)
    weights = list(rng.exponential(size=6) * rng.choice([1, 1000], size=6))
    max_share = float(rng.uniform(1 / 6, 1))
    out = capped_weights(weights, max_share)
    assert max(shares(out)) <= max_share + 1e-9
    assert all(o <= w + 1e-9 for o, w in zip(out, weights, strict=True))


def test_leave_one_out_distance_sees_a_lone_far_centroid_as_far():
    tight = np.array([[0.0, 0.0], [0.0, 0.2], [5.0, 0.0], [5.0, 0.2]])
    points = np.vstack([tight, [[100.0, 0.0]]])
    labels = np.array([0, 0, 1, 1, 2])  # k-means gives the far centroid a cluster of its own
    distances = leave_one_out_distances(points, labels)
    np.testing.assert_allclose(distances[:4], [0.2, 0.2, 0.2, 0.2])
    assert distances[4] == pytest.approx(np.hypot(95.0, 0.1))
    assert leave_one_out_distances(np.zeros((1, 2)), np.array([0]))[0] == 0.0


def test_outliers_are_the_distances_above_threshold_times_scale():
    distances = np.array([0.2, 0.3, 5.0, 100.0])
    np.testing.assert_array_equal(outliers(distances, 10.0, 0.25), [False, False, True, True])
    assert not outliers(distances, 0.0, 0.25).any()  # off
    assert not outliers(distances, 10.0, 0.0).any()  # centroids on top of each other: no scale
