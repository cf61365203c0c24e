"""Each aggregation rule on hand-made adapters, and one run per aggregation path through the loop."""

from __future__ import annotations

import numpy as np
import pytest

from fedrouter_app.federation.aggregation import weighted_average
from fedrouter_app.federation.robust_aggregation import HeldAggregate, NormClippedMean, new_aggregate
from fedrouter_app.runners.inprocess import run_inprocess
from fedrouter_app.schema.federation import AggregationSettings
from tests.conftest import tiny_overrides

KEYS = ("m.q.lora_A.weight", "m.q.lora_B.weight")


def state(*values: float) -> dict[str, np.ndarray]:
    """An adapter whose two 2-vectors hold ``values`` (first key) and their negatives (second key)."""
    a = np.array(values, dtype=np.float32)
    return {KEYS[0]: a, KEYS[1]: -a}


def aggregate(rule: str, states, weights=None, reference=None, **kwargs):
    agg = new_aggregate(AggregationSettings(rule=rule, **kwargs), reference)
    for s, w in zip(states, weights or [1.0] * len(states), strict=True):
        agg.add(s, w)
    return agg.result()


HONEST = [state(1.0, 2.0), state(1.1, 2.1), state(0.9, 1.9), state(1.0, 2.2), state(1.05, 1.95)]
ATTACK = state(1000.0, -1000.0)


def test_mean_is_the_weighted_mean():
    result = aggregate("mean", HONEST[:2], [1.0, 3.0])
    expected = weighted_average(HONEST[:2], [1.0, 3.0])
    for key in KEYS:
        np.testing.assert_allclose(result[key], expected[key])


def test_norm_clip_scales_long_updates_to_the_bound_and_keeps_short_ones():
    reference = state(0.0, 0.0)
    # Update norms: sqrt(2 * (3^2 + 4^2)) = 7.07 (clipped to 1) and sqrt(2 * 0.02) = 0.2 (kept).
    result = aggregate("norm_clip", [state(3.0, 4.0), state(0.1, 0.1)], reference=reference, clip_norm=1.0)
    clipped = np.array([3.0, 4.0]) / np.sqrt(50.0)
    np.testing.assert_allclose(result[KEYS[0]], (clipped + 0.1) / 2, rtol=1e-6)
    np.testing.assert_allclose(result[KEYS[1]], -(clipped + 0.1) / 2, rtol=1e-6)


def test_norm_clip_bounds_what_one_attacker_moves_the_mean():
    reference = state(1.0, 2.0)
    result = aggregate("norm_clip", [*HONEST, ATTACK], reference=reference, clip_norm=0.5)
    moved = np.sqrt(sum(float(np.sum((result[k] - reference[k]) ** 2)) for k in KEYS))
    assert moved <= 0.5 + 1e-6


def test_norm_clip_needs_the_starting_adapter():
    with pytest.raises(ValueError, match="needs the adapter the replies started from"):
        new_aggregate(AggregationSettings(rule="norm_clip"))


def test_median_ignores_one_outlier_per_coordinate():
    result = aggregate("median", [*HONEST, ATTACK])
    # Medians of 6 values per coordinate: (1.0 + 1.05) / 2 and (1.95 + 2.0) / 2, the attacker's value left out.
    np.testing.assert_allclose(result[KEYS[0]], [1.025, 1.975], rtol=1e-6)
    np.testing.assert_allclose(result[KEYS[1]], [-1.025, -1.975], rtol=1e-6)


def test_trimmed_mean_cuts_each_end():
    values = [state(v, v) for v in (0.0, 1.0, 2.0, 3.0, 100.0)]
    result = aggregate("trimmed_mean", values, trim_fraction=0.2)
    np.testing.assert_allclose(result[KEYS[0]], [2.0, 2.0])  # mean of 1, 2, 3


def test_krum_picks_an_honest_reply_and_multi_krum_averages_honest_ones():
    chosen = aggregate("krum", [*HONEST, ATTACK], num_malicious=1)
    assert any(all(np.allclose(chosen[k], h[k]) for k in KEYS) for h in HONEST)
    kept = aggregate("multi_krum", [*HONEST, ATTACK], num_malicious=1)  # keeps n - f = 5: the honest ones
    expected = weighted_average(HONEST, [1.0] * 5)
    for key in KEYS:
        np.testing.assert_allclose(kept[key], expected[key], rtol=1e-5)


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
def test_krum_with_fewer_than_2f_plus_3_replies_takes_the_median_whatever_their_order(rule):
    replies = [HONEST[0], ATTACK, HONEST[1], HONEST[2]]  # 4 < 2 * 1 + 3
    median = aggregate("median", replies)
    for order in (replies, replies[::-1], replies[1:] + replies[:1]):
        agg = new_aggregate(AggregationSettings(rule=rule, num_malicious=1))
        for reply in order:
            agg.add(reply, 1.0)
        result = agg.result()
        for key in KEYS:
            np.testing.assert_array_equal(result[key], median[key])
        assert agg.fallback == f"{rule} with num_malicious=1 needs 5 replies, got 4: median"
    full = new_aggregate(AggregationSettings(rule=rule, num_malicious=1))
    for reply in [*HONEST, ATTACK]:
        full.add(reply, 1.0)
    full.result()
    assert full.fallback is None


def test_held_rules_refuse_mismatched_or_missing_input():
    agg = HeldAggregate(AggregationSettings(rule="median"))
    with pytest.raises(ValueError, match="zero adapters"):
        agg.result()
    agg.add(HONEST[0], 1.0)
    with pytest.raises(ValueError, match="different keys"):
        agg.add({"other": np.zeros(2, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="finite and non-negative"):
        agg.add(HONEST[1], float("nan"))


def test_streaming_rules_hold_one_accumulator():
    clip = NormClippedMean(state(0.0, 0.0), 1.0)
    for s in HONEST:
        clip.add(s, 1.0)
    assert clip.count == 5 and not hasattr(clip, "states")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "rule"), [("fedit", "median"), ("fedrouter", "norm_clip"), ("fedit", "krum")])
def test_runs_with_a_robust_rule(method, rule):
    results, _, _ = run_inprocess(list(tiny_overrides(f"method={method}", f"aggregation.rule={rule}")), 4)
    assert results["run"]["status"] == "completed"
    assert all(r["failures"] == [] for r in results["rounds"])
    assert np.isfinite(results["final"]["mean"]["score"])
    # Krum with f=1 needs 5 replies; 4 clients give 4: every training round records the median fallback.
    fallbacks = [r["strategy"].get("aggregation_fallbacks") for r in results["rounds"] if r["round"] > 0]
    expected = [["krum with num_malicious=1 needs 5 replies, got 4: median"]] if rule == "krum" else [None]
    assert fallbacks == expected * len(fallbacks) and fallbacks
