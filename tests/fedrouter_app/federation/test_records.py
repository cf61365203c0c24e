import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedrouter_app.federation.records import (
    InvalidReplyError,
    adapter_record,
    local_adapter_record,
    packed_key,
    read_adapter,
    read_local_adapter,
    tensor_bytes,
    wire_bytes,
)
from fedrouter_app.model.lora import num_parameters


def trained_like_state(adapter_model):
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in adapter_model.state().items()}


def test_round_trip_is_exact_and_lora_only(adapter_model):
    state = trained_like_state(adapter_model)
    record = adapter_record(state)
    # One packed array for the whole adapter: one object per adapter on the wire.
    assert list(record) == [packed_key(adapter_model.template)]
    assert record[packed_key(adapter_model.template)].shape == (num_parameters(adapter_model.template),)
    back = read_adapter(record, adapter_model.template)
    assert list(back) == list(adapter_model.template)
    assert all(".lora_A." in k or ".lora_B." in k for k in back)
    for key, value in state.items():
        assert back[key].dtype == np.float32
        assert back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value)


def test_record_holds_no_base_weights(adapter_model):
    record = adapter_record(adapter_model.state())
    base_params = sum(p.numel() for n, p in adapter_model.model.named_parameters() if "lora_" not in n)
    assert tensor_bytes(record) == 4 * num_parameters(adapter_model.template)
    assert tensor_bytes(record) < 4 * base_params
    # Headers and keys add a little, never a tensor's worth.
    assert 0 < wire_bytes({"adapter": record}) - tensor_bytes(record) < 300 * len(record)


def test_model_state_round_trip_through_the_model(adapter_model):
    state = trained_like_state(adapter_model)
    adapter_model.load_state(read_adapter(adapter_record(state), adapter_model.template))
    for key, value in adapter_model.state().items():
        np.testing.assert_array_equal(value, state[key])


TEMPLATE = {"m.q.lora_B.weight": (3, 2), "m.q.lora_A.weight": (2, 3), "m.k.lora_A.weight": (2, 4)}


def small_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in TEMPLATE.items()}


def test_packing_is_sorted_and_independent_of_dict_order():
    state = small_state()
    reordered = {k: state[k] for k in reversed(list(state))}
    packed = adapter_record(state)[packed_key(TEMPLATE)].numpy()
    assert np.array_equal(packed, adapter_record(reordered)[packed_key(TEMPLATE)].numpy())
    expected = np.concatenate([state[k].ravel() for k in sorted(TEMPLATE)])
    assert packed.dtype == np.float32 and np.array_equal(packed, expected)
    # Read back against a template in any order: tensors come back in the template's order.
    back = read_adapter(adapter_record(reordered), TEMPLATE)
    assert list(back) == list(TEMPLATE)
    for key in TEMPLATE:
        np.testing.assert_array_equal(back[key], state[key])


def test_unpacked_tensors_are_independent_slices():
    back = read_adapter(adapter_record(small_state()), TEMPLATE)
    before = {k: v.copy() for k, v in back.items()}
    back["m.q.lora_A.weight"] += 1.0
    for key in ("m.q.lora_B.weight", "m.k.lora_A.weight"):
        np.testing.assert_array_equal(back[key], before[key])


def test_float64_and_other_inputs_are_packed_as_float32():
    state = {k: v.astype(np.float64) for k, v in small_state().items()}
    back = read_adapter(adapter_record(state), TEMPLATE)
    assert all(v.dtype == np.float32 for v in back.values())


def test_an_empty_adapter_round_trips():
    assert read_adapter(adapter_record({}), {}) == {}


def packed(template, value: np.ndarray) -> ArrayRecord:
    return ArrayRecord({packed_key(template): Array(value)})


@pytest.mark.parametrize(
    ("record", "match"),
    [
        # Another layout: a missing tensor, an extra one, a reshaped one (even with the same length).
        (lambda s: adapter_record({k: v for k, v in s.items() if k != "m.k.lora_A.weight"}), "another layout"),
        (lambda s: adapter_record({**s, "base_model.model.lm_head.weight": np.zeros((2, 2))}), "another layout"),
        (lambda s: adapter_record({**s, "m.q.lora_A.weight": np.zeros((3, 2))}), "another layout"),
        # Not one packed array: per-tensor records (the old wire form), extra arrays, nothing.
        (lambda s: local_adapter_record(s), "holds arrays"),
        (lambda s: ArrayRecord({**adapter_record(s), "x": Array(np.zeros(1, np.float32))}), "holds arrays"),
        (lambda s: ArrayRecord(), "holds arrays"),
        # The right key with the wrong contents.
        (lambda s: packed(TEMPLATE, np.zeros(num_parameters(TEMPLATE) - 1, np.float32)), "shape"),
        (lambda s: packed(TEMPLATE, np.zeros(num_parameters(TEMPLATE) + 1, np.float32)), "shape"),
        (lambda s: packed(TEMPLATE, np.zeros((1, num_parameters(TEMPLATE)), np.float32)), "shape"),
        (lambda s: packed(TEMPLATE, np.zeros(num_parameters(TEMPLATE), np.float64)), "dtype float64"),
        (lambda s: packed(TEMPLATE, np.zeros(num_parameters(TEMPLATE), np.int32)), "dtype int32"),
        (lambda s: adapter_record({**s, "m.q.lora_B.weight": np.full((3, 2), np.nan)}), "non-finite"),
        (lambda s: adapter_record({**s, "m.k.lora_A.weight": np.full((2, 4), np.inf)}), "non-finite"),
    ],
)
def test_bad_adapters_are_rejected(record, match):
    with pytest.raises(InvalidReplyError, match=match):
        read_adapter(record(small_state()), TEMPLATE)


def test_wrong_dtype_is_rejected_before_decoding():
    # Metadata says float64; the bytes are never decoded (they are not even an .npy).
    key = packed_key(TEMPLATE)
    record = ArrayRecord({key: Array(dtype="float64", shape=(15,), stype="numpy.ndarray", data=b"junk")})
    with pytest.raises(InvalidReplyError, match="dtype float64"):
        read_adapter(record, TEMPLATE)


def test_damaged_bytes_do_not_decode():
    key = packed_key(TEMPLATE)
    record = ArrayRecord(
        {key: Array(dtype="float32", shape=(num_parameters(TEMPLATE),), stype="numpy.ndarray", data=b"\x93NUMPY xx")}
    )
    with pytest.raises(InvalidReplyError, match="does not decode"):
        read_adapter(record, TEMPLATE)


def test_layout_key_depends_on_keys_and_shapes_only():
    assert packed_key(TEMPLATE) == packed_key(dict(reversed(list(TEMPLATE.items()))))
    assert packed_key(TEMPLATE) == packed_key({k: list(v) for k, v in TEMPLATE.items()})
    assert packed_key(TEMPLATE) != packed_key({**TEMPLATE, "m.q.lora_A.weight": (3, 2)})
    assert packed_key(TEMPLATE) != packed_key({k: v for k, v in TEMPLATE.items() if "lora_A" in k})


def test_local_records_stay_per_tensor_and_checked(adapter_model):
    state = trained_like_state(adapter_model)
    record = local_adapter_record(state)
    assert set(record) == set(adapter_model.template)
    back = read_local_adapter(record, adapter_model.template)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value)
    state.pop(next(iter(state)))
    with pytest.raises(InvalidReplyError, match="missing"):
        read_local_adapter(local_adapter_record(state), adapter_model.template)
