import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedrouter_app.model.lora import num_parameters
from fedrouter_app.records import InvalidReplyError, adapter_record, read_adapter, tensor_bytes, wire_bytes


def trained_like_state(adapter_model):
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in adapter_model.state().items()}


def test_round_trip_is_exact_and_lora_only(adapter_model):
    state = trained_like_state(adapter_model)
    record = adapter_record(state)
    assert all(".lora_A." in k or ".lora_B." in k for k in record)
    assert set(record) == set(adapter_model.template)
    back = read_adapter(record, adapter_model.template)
    for key, value in state.items():
        assert back[key].dtype == np.float32
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


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.pop(next(iter(s))), "missing"),
        (lambda s: s.update({"base_model.model.lm_head.weight": np.zeros((2, 2), np.float32)}), "unexpected"),
        (lambda s: s.update({k: np.zeros((1, 1), np.float32) for k in list(s)[:1]}), "shape"),
        (lambda s: s.update({k: np.full(v.shape, np.nan, np.float32) for k, v in list(s.items())[:1]}), "non-finite"),
    ],
)
def test_bad_adapters_are_rejected(adapter_model, mutate, match):
    state = adapter_model.state()
    mutate(state)
    with pytest.raises(InvalidReplyError, match=match):
        read_adapter(adapter_record(state), adapter_model.template)


def test_wrong_dtype_is_rejected_before_decoding(adapter_model):
    state = adapter_model.state()
    record = ArrayRecord({k: Array(v.astype(np.float64)) for k, v in state.items()})
    with pytest.raises(InvalidReplyError, match="dtype float64"):
        read_adapter(record, adapter_model.template)
