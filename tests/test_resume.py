"""Checkpoint and resume: a run stopped after round k and resumed ends as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrouter_app.federation.checkpoint import CHECKPOINT_DIR, Checkpointer, CheckpointError, latest_checkpoint
from fedrouter_app.federation.exchange import RoundRecord
from fedrouter_app.federation.results import load_predictions
from fedrouter_app.runners.inprocess import run_inprocess
from tests.conftest import TINY

STOP_AFTER = 2


class ServerStoppedError(RuntimeError):
    """Stands for the server process dying right after a checkpoint."""


def _stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    original = Checkpointer.on_round_end

    def on_round_end(self: Checkpointer, record: RoundRecord) -> None:
        original(self, record)
        if record.server_round == after:
            raise ServerStoppedError(f"stopped after round {after}")

    monkeypatch.setattr(Checkpointer, "on_round_end", on_round_end)


def _adapters(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.parent.name: load_file(str(p)) for p in sorted((run_dir / "adapters").glob("*/*.safetensors"))}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedrouter", "local"])
def test_resumed_run_ends_like_an_uninterrupted_one(method, tmp_path, monkeypatch):
    # fedrouter: server clusters and per-cluster adapters, clients' local clusters; local: everything
    # on the clients (every strategy's own state round trip is in tests/fedrouter_app/federation/test_checkpoint.py).
    overrides = [*TINY, f"method={method}", "num_rounds=3", "eval.at_start=false", "eval.every=3"]
    whole, whole_dir, _ = run_inprocess([*overrides, f"output.run_name={method}-whole"], 4)

    with monkeypatch.context() as patch:
        _stop_after_checkpoint(patch, STOP_AFTER)
        with pytest.raises(ServerStoppedError):
            run_inprocess([*overrides, f"output.run_name={method}-stopped"], 4)
    stopped_dir = whole_dir.parent / f"{method}-stopped"
    assert json.loads((stopped_dir / "results.json").read_text())["run"]["status"] == "failed"
    assert latest_checkpoint(stopped_dir / CHECKPOINT_DIR).name == f"round-{STOP_AFTER:05d}"

    resumed, resumed_dir, _ = run_inprocess([*overrides, f"checkpoint.resume={stopped_dir}"], 4)

    assert resumed_dir == stopped_dir
    assert resumed["run"]["status"] == "completed"
    assert resumed["run"]["resumed"][0]["after_round"] == STOP_AFTER
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["final"] == whole["final"]
    # Predictions of the final round, written once, as the uninterrupted run wrote them.
    assert load_predictions(resumed_dir) == load_predictions(whole_dir) != []
    ours, theirs = _adapters(resumed_dir), _adapters(whole_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        for key in ours[name]:
            np.testing.assert_array_equal(ours[name][key], theirs[name][key], err_msg=f"{name}/{key}")


@pytest.mark.slow
def test_clients_drop_their_saved_state_when_the_run_ends(tmp_path):
    results, _, _ = run_inprocess([*TINY, "method=local", f"checkpoint.client_dir={tmp_path}"], 4)
    assert results["run"]["status"] == "completed"
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_another_configuration(tmp_path):
    _, run_dir, _ = run_inprocess([*TINY, "method=fedit", "num_rounds=1"], 4)
    with pytest.raises(CheckpointError, match="another configuration"):
        run_inprocess([*TINY, "method=fedit", "num_rounds=1", "lora.dropout=0.1", f"checkpoint.resume={run_dir}"], 4)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_inprocess([*TINY, "method=fedit", f"checkpoint.resume={tmp_path}"], 4)
