import numpy as np
import pytest

from fedrouter_app.federation.aggregation import WeightedMean, weighted_average

A = "m.layers.0.q_proj.lora_A.weight"
B = "m.layers.0.q_proj.lora_B.weight"


def state(a: float, b: float) -> dict[str, np.ndarray]:
    return {A: np.full((2, 3), a, dtype=np.float32), B: np.full((3, 2), b, dtype=np.float32)}


def test_weighted_mean_of_a_and_b_separately():
    out = weighted_average([state(1, 10), state(4, 40)], [1, 2])
    np.testing.assert_allclose(out[A], 3.0)
    np.testing.assert_allclose(out[B], 30.0)
    assert out[A].dtype == np.float32


def test_never_forms_the_product():
    # The mean of B·A products differs from the product of means; we average factors.
    s1 = {A: np.array([[1.0, 0.0]], dtype=np.float32), B: np.array([[1.0]], dtype=np.float32)}
    s2 = {A: np.array([[0.0, 1.0]], dtype=np.float32), B: np.array([[3.0]], dtype=np.float32)}
    out = weighted_average([s1, s2], [1, 1])
    np.testing.assert_allclose(out[A], [[0.5, 0.5]])
    np.testing.assert_allclose(out[B], [[2.0]])


def test_uniform_weights_and_single_state():
    np.testing.assert_allclose(weighted_average([state(1, 1), state(3, 5)], [1, 1])[B], 3.0)
    single = state(2.5, -1)
    np.testing.assert_array_equal(weighted_average([single], [7])[A], single[A])


def test_float64_accumulation_is_exact_for_many_small_weights():
    states = [state(1e-3 * i, 0) for i in range(1000)]
    out = weighted_average(states, [1.0] * 1000)
    np.testing.assert_allclose(out[A], 1e-3 * 999 / 2, rtol=1e-6)


def test_running_mean_equals_batch_mean():
    mean = WeightedMean()
    for s, w in [(state(1, 2), 3), (state(5, 6), 1)]:
        mean.add(s, w)
    np.testing.assert_array_equal(mean.result()[A], weighted_average([state(1, 2), state(5, 6)], [3, 1])[A])
    assert mean.count == 2 and mean.total_weight == 4


def test_the_mean_has_the_same_bits_whatever_the_order_replies_arrive_in():
    # The exact mean is 2^-20 + 2^-44 + 2^-70: just above the midpoint between two float32 values, so it rounds up.
    # A plain float64 sum that meets 2^10 + 2^-68 first loses the 2^-68 and lands on the midpoint (rounding down,
    # to even); compensated sums keep it in every order.
    values = [2.0**10, -(2.0**10), 2.0**-18, 2.0**-41, 2.0**-67]
    weights = [1.0, 1.0, 1.0, 0.5, 0.5]
    expected = np.float32(2.0**-20 + 2.0**-43)
    for order in ([0, 4, 1, 2, 3], [0, 1, 2, 3, 4], [3, 2, 4, 1, 0]):
        mean = WeightedMean()
        for i in order:
            mean.add({A: np.full((2, 3), values[i], np.float32)}, weights[i])
        assert (mean.result()[A] == expected).all(), order
    plain = sum(weights[i] * np.float64(values[i]) for i in [0, 4, 1, 2, 3]) / 4
    assert np.float32(plain) != expected  # what an order-dependent sum gives


@pytest.mark.parametrize(
    ("states", "weights", "match"),
    [
        ([], [], "zero adapters"),
        ([state(1, 1)], [0], "sum to zero"),
        ([state(1, 1)], [-1], "non-negative"),
        ([state(1, 1)], [float("nan")], "finite"),
        ([state(1, 1), {A: np.zeros((2, 3), np.float32)}], [1, 1], "different keys"),
        ([state(1, 1), {A: np.zeros((2, 2), np.float32), B: np.zeros((3, 2), np.float32)}], [1, 1], "shape"),
        ([state(1, 1)], [1, 2], "weights"),
    ],
)
def test_bad_inputs(states, weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_average(states, weights)
