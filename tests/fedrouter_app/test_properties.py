"""Property-based tests (hypothesis) of aggregation and of the checks every reply goes through."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrouter_app.federation.aggregation import WeightedMean, weighted_average
from fedrouter_app.federation.records import (
    MAX_COUNT,
    InvalidReplyError,
    adapter_record,
    check_evaluation_metrics,
    packed_key,
    read_adapter,
    read_count,
)
from fedrouter_app.model.lora import num_parameters
from fedrouter_app.strategies.fedrouter.reports import _route_key

TEMPLATE = {"a": (2, 3), "b": (3,)}
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
weight = st.floats(1e-3, 1e3, allow_nan=False)


@st.composite
def states_and_weights(draw: st.DrawFn) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    n = draw(st.integers(1, 6))
    states = [
        {key: draw(arrays(np.float32, shape, elements=finite)) for key, shape in TEMPLATE.items()} for _ in range(n)
    ]
    return states, [draw(weight) for _ in range(n)]


@FAST
@given(states_and_weights())
def test_weighted_mean_stays_within_the_hull_of_its_inputs(data):
    states, weights = data
    mean = weighted_average(states, weights)
    for key in TEMPLATE:
        stacked = np.stack([s[key] for s in states])
        slack = 1e-5 * (1 + np.abs(stacked).max())
        assert (mean[key] >= stacked.min(axis=0) - slack).all() and (mean[key] <= stacked.max(axis=0) + slack).all()
        assert mean[key].dtype == np.float32


@FAST
@given(states_and_weights(), st.randoms(use_true_random=False), st.floats(1e-3, 1e3))
def test_weighted_mean_ignores_order_and_the_scale_of_weights(data, rng, scale):
    states, weights = data
    mean = weighted_average(states, weights)
    order = list(range(len(states)))
    rng.shuffle(order)
    shuffled = weighted_average([states[i] for i in order], [weights[i] * scale for i in order])
    for key in TEMPLATE:
        np.testing.assert_allclose(shuffled[key], mean[key], rtol=1e-5, atol=1e-5 * (1 + np.abs(mean[key]).max()))


@FAST
@given(states_and_weights())
def test_equal_weights_give_the_plain_mean_and_one_state_itself(data):
    states, _ = data
    mean = weighted_average(states, [1.0] * len(states))
    for key in TEMPLATE:
        np.testing.assert_allclose(
            mean[key], np.mean([s[key] for s in states], axis=0, dtype=np.float64), rtol=1e-6, atol=1e-30
        )
    one = weighted_average(states[:1], [3.0])
    for key in TEMPLATE:
        np.testing.assert_array_equal(one[key], states[0][key])


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda w: not (np.isfinite(w) and w >= 0)))
def test_a_weight_that_is_negative_or_not_finite_is_refused(w):
    with pytest.raises(ValueError, match="weight"):
        WeightedMean().add({"a": np.zeros(2, np.float32)}, w)


DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_])


@st.composite
def records(draw: st.DrawFn) -> tuple[ArrayRecord, bool]:
    """A record near a packed adapter (key, length, dtype, values each possibly off) and whether it is valid."""
    state = {key: draw(arrays(np.float32, shape, elements=finite)) for key, shape in TEMPLATE.items()}
    layout = draw(st.sampled_from(["right", "missing", "extra", "reshaped", "per-tensor", "two-arrays"]))
    if layout == "missing":
        state.pop(draw(st.sampled_from(sorted(state))))
    elif layout == "extra":
        state["c"] = np.zeros(2, np.float32)
    elif layout == "reshaped":
        state["a"] = state["a"].reshape(3, 2)
    if layout == "per-tensor":
        return ArrayRecord({k: Array(v) for k, v in state.items()}), False
    record = adapter_record(state)
    if layout == "two-arrays":
        record["extra"] = Array(np.zeros(1, np.float32))
    valid = layout == "right"
    if valid and draw(st.booleans()):
        # The right key with other contents: any length, dtype and values.
        size = num_parameters(TEMPLATE)
        shape = tuple(draw(st.lists(st.integers(0, size + 2), min_size=0, max_size=2)))
        dtype = draw(DTYPES)
        value = draw(arrays(dtype, shape))
        record[packed_key(TEMPLATE)] = Array(value)
        valid = shape == (size,) and dtype == np.float32 and bool(np.isfinite(value).all())
    return record, valid


@FAST
@given(records())
def test_only_records_matching_the_template_with_finite_float32_pass(case):
    record, valid = case
    if valid:
        state = read_adapter(record, TEMPLATE)
        assert all(state[k].shape == s and state[k].dtype == np.float32 for k, s in TEMPLATE.items())
    else:
        with pytest.raises(InvalidReplyError):
            read_adapter(record, TEMPLATE)


@FAST
@given(st.dictionaries(st.sampled_from(["a", "b"]), arrays(np.float32, st.integers(0, 4), elements=finite)))
def test_packing_round_trips_exactly_for_any_layout(state):
    template = {k: v.shape for k, v in state.items()}
    back = read_adapter(adapter_record(state), template)
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value)


@FAST
@given(st.binary(max_size=64), st.sampled_from(["numpy.ndarray", "torch.Tensor"]))
def test_arbitrary_bytes_never_decode_into_an_adapter_or_crash(payload, stype):
    record = ArrayRecord(
        {packed_key(TEMPLATE): Array(dtype="float32", shape=(num_parameters(TEMPLATE),), stype=stype, data=payload)}
    )
    with pytest.raises(InvalidReplyError):
        read_adapter(record, TEMPLATE)


@FAST
@given(st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-(2**60), 2**60)))
def test_counts_are_integers_in_range_or_refused(value):
    metrics = {} if value is None else {"k": value}
    ok = value is not None and np.isfinite(value) and value == int(value) and 0 <= value <= MAX_COUNT
    if ok:
        assert read_count(metrics, "k") == int(value)
    else:
        with pytest.raises(InvalidReplyError):
            read_count(metrics, "k")


metric_key = st.text(alphabet="task./copyrevse_nlm0123", max_size=30)


@FAST
@given(st.dictionaries(metric_key, st.floats(-2, 2, allow_nan=False), max_size=6))
def test_evaluation_metrics_either_pass_or_are_refused_never_crash(metrics):
    try:
        check_evaluation_metrics(metrics, ["copy", "reverse"])
    except InvalidReplyError:
        return
    for key, value in metrics.items():
        if "task." in key:
            assert key.split(".")[-1] in ("n", "loss", "exact_match", "rouge1", "rougeL", "score", "own") and value >= 0


@FAST
@given(metric_key)
def test_routing_keys_parse_or_are_ignored(key):
    parsed = _route_key(key)
    if parsed is not None:
        mode, whose, _task, cluster = parsed
        assert mode in ("global", "local") and whose in ("own", "other") and cluster >= 0


def test_a_valid_record_round_trips():
    state = {k: np.arange(np.prod(s), dtype=np.float32).reshape(s) for k, s in TEMPLATE.items()}
    back = read_adapter(adapter_record(state), TEMPLATE)
    for key in TEMPLATE:
        np.testing.assert_array_equal(back[key], state[key])
