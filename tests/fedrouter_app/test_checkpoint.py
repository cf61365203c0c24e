"""Server checkpoints and client state stores, on hand-made states."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedrouter_app.checkpoint import (
    CheckpointError,
    ClientStateStore,
    StrategyState,
    last_checkpoint_round,
    latest_checkpoint,
    load_checkpoint,
    load_record_dict,
    save_checkpoint,
    save_record_dict,
)
from fedrouter_app.model.loading import lora_template
from fedrouter_app.model.lora import initial_lora_state
from fedrouter_app.registry import method_names, strategy_class

TEMPLATE = {"layer.lora_A.weight": (2, 3), "layer.lora_B.weight": (3, 2)}


def _state(seed: int) -> StrategyState:
    return StrategyState(
        adapters={"cluster-0": initial_lora_state(TEMPLATE, seed), "a-only": {"layer.lora_A.weight": np.ones((2, 3))}},
        arrays={"centroids": np.arange(6, dtype=np.float32).reshape(2, 3), "empty": np.zeros((0, 3), np.float32)},
        meta={"registry": [[0, [5, 3], [{"copy": 5}, {"max": 3}], [1, 0]]], "tasks": ["copy", "max"]},
    )


def test_checkpoint_round_trip(tmp_path):
    state = _state(1)
    save_checkpoint(tmp_path, 3, state, "run-abc", "fp", keep=2)
    loaded = load_checkpoint(latest_checkpoint(tmp_path), TEMPLATE)
    assert (loaded.server_round, loaded.run_key, loaded.fingerprint) == (3, "run-abc", "fp")
    assert loaded.state.meta == state.meta
    for name, adapter in state.adapters.items():
        assert loaded.state.adapters[name].keys() == adapter.keys()
        for key in adapter:
            np.testing.assert_array_equal(loaded.state.adapters[name][key], adapter[key])
    for name, array in state.arrays.items():
        np.testing.assert_array_equal(loaded.state.arrays[name], array)
        assert loaded.state.arrays[name].shape == array.shape


def test_only_the_newest_checkpoints_are_kept_and_half_written_ones_ignored(tmp_path):
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, r, _state(r), "k", "fp", keep=2)
    assert sorted(p.name for p in tmp_path.glob("round-*")) == ["round-00002", "round-00003"]
    (tmp_path / "round-00004").mkdir()  # a crash before the rename leaves no complete round-4
    assert latest_checkpoint(tmp_path).name == "round-00003"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_loading_checks_shapes_and_reports_damage(tmp_path):
    path = save_checkpoint(tmp_path, 1, _state(0), "k", "fp", keep=1)
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path, {"layer.lora_A.weight": (4, 3), "layer.lora_B.weight": (3, 4)})
    (path / "state.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path, TEMPLATE)


@pytest.mark.parametrize(("completed", "every", "expected"), [(0, 1, -1), (1, 1, 1), (5, 2, 4), (1, 2, -1), (7, 0, -1)])
def test_last_checkpoint_round(completed, every, expected):
    assert last_checkpoint_round(completed, every) == expected


def _records(value: float) -> RecordDict:
    return RecordDict(
        {
            "adapter.personal": ArrayRecord({"w": Array(np.full((2, 2), value, np.float32))}),
            "ints": ArrayRecord({"labels": Array(np.array([0, 1, 1], dtype=np.int64))}),
            "tap": ConfigRecord({"losses": [0.5, value], "name": "x", "flag": True, "n": 3, "raw": b"\x00\x01"}),
            "metrics": MetricRecord({"loss": value, "steps": 4}),
        }
    )


def test_record_dict_round_trip_keeps_types(tmp_path):
    records = _records(1.5)
    save_record_dict(records, tmp_path / "s")
    loaded = load_record_dict(tmp_path / "s")
    assert set(loaded.keys()) == set(records.keys())
    np.testing.assert_array_equal(loaded["adapter.personal"]["w"].numpy(), np.full((2, 2), 1.5, np.float32))
    assert loaded["ints"]["labels"].numpy().dtype == np.int64
    assert dict(loaded["tap"]) == dict(records["tap"])
    assert dict(loaded["metrics"]) == dict(records["metrics"])


def test_client_store_keeps_what_a_resume_can_need(tmp_path):
    store = ClientStateStore(tmp_path, "run-1", 3)
    assert store.load(max_round=10) is None
    store.save(_records(1.0), server_round=1, durable_round=-1)
    store.save(_records(2.0), server_round=2, durable_round=1)
    store.save(_records(3.0), server_round=3, durable_round=1)
    # Round 1 is the newest at or before the server's checkpoint: kept, with everything newer.
    assert store.load(max_round=1)["metrics"]["loss"] == 1.0
    assert store.load(max_round=2)["metrics"]["loss"] == 2.0
    store.save(_records(4.0), server_round=4, durable_round=3)
    assert store.load(max_round=2) is None
    # A resumed run re-doing round 2 drops what the interrupted run saved after it.
    store.save(_records(5.0), server_round=2, durable_round=-1)
    assert store.load(max_round=10)["metrics"]["loss"] == 5.0
    store.clear()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", method_names())
def test_every_strategy_restores_its_own_state(method, make_cfg):
    cfg = make_cfg(f"method={method}")
    template = lora_template(cfg.model, cfg.lora)
    cls = strategy_class(method)
    saved = cls(cfg, template).state_dict()
    restored = cls(cfg, template)
    restored.load_state_dict(saved)
    again = restored.state_dict()
    assert again.meta == saved.meta
    assert again.adapters.keys() == saved.adapters.keys()
    assert again.arrays.keys() == saved.arrays.keys()
