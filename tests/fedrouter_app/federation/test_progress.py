"""The round progress bar and the TensorBoard callback."""

import pytest

import fedrouter_app.federation.progress as progress
from fedrouter_app.federation.exchange import Exchange, RoundRecord
from fedrouter_app.federation.progress import RoundProgress, TensorBoardLog, round_scalars


def record() -> RoundRecord:
    evaluate = {
        0: {"task.a.score": 1.0, "task.a.loss": 0.5, "task.a.n": 2.0, "task.a.own": 1.0},
        1: {"task.b.score": 0.0, "task.b.loss": 2.5, "task.b.n": 2.0, "task.b.own": 0.0},
    }
    rec = RoundRecord(server_round=2, lr=0.1, train={0: {"train-loss": 3.0, "train-steps": 1.0}}, evaluate=evaluate)
    rec.traffic = [Exchange("train", 0, 100, 40, 0, 0), Exchange("train", 1, 100, 60, 0, 0)]
    return rec


def test_round_scalars():
    scalars = round_scalars(record(), unseen=("b",))
    assert scalars["train/loss"] == 3.0 and scalars["bytes/up_per_client"] == 50.0
    assert scalars["eval/score"] == pytest.approx(0.5) and scalars["eval/own_score"] == 1.0
    assert scalars["eval/unseen_score"] == 0.0 and scalars["eval/seen_score"] == 1.0
    assert scalars["task/b"] == 0.0
    assert "eval/unseen_score" not in round_scalars(record())


def test_tensorboard_writes_events_when_installed(tmp_path, cfg):
    pytest.importorskip("tensorboard")
    callback = TensorBoardLog(tmp_path)
    callback.on_run_start(cfg, None, None)
    callback.on_round_end(record())
    callback.on_run_end(None)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_is_a_no_op_without_it(tmp_path, cfg, monkeypatch):
    monkeypatch.setattr(progress, "tensorboard_available", lambda: False)
    callback = TensorBoardLog(tmp_path)
    callback.on_run_start(cfg, None, None)
    callback.on_round_end(record())
    callback.on_run_end(None)
    assert not (tmp_path / "tensorboard").exists()


def test_round_progress_counts_rounds(cfg, monkeypatch):
    bar = RoundProgress()
    bar.on_run_start(cfg, None, None)
    assert bar.bar.disable  # stderr is not a terminal under pytest: the bar stays silent
    bar.on_run_end(None)
    assert bar.bar is None
    real_tqdm = progress.tqdm
    monkeypatch.setattr(progress, "tqdm", lambda **kwargs: real_tqdm(**{**kwargs, "disable": False}))
    bar.on_run_start(cfg, None, None)
    bar.on_round_end(record())
    assert bar.bar.n == 1 and bar.bar.total == cfg.num_rounds + 1
    bar.on_run_end(None)
