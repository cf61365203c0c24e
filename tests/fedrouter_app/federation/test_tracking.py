"""The MLflow callback against a real local MLflow store (SQLite, in the test's folder)."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace

import pytest

from fedrouter_app.federation import tracking
from fedrouter_app.federation.exchange import Exchange, RoundRecord
from fedrouter_app.federation.tracking import MlflowLog, flat_params, sweep_parent, tracking_uri
from fedrouter_app.schema.checks import ConfigError

pytest.importorskip("mlflow")


def record(server_round: int, score: float) -> RoundRecord:
    evaluate = {
        0: {"task.a.score": score, "task.a.loss": 0.5, "task.a.n": 2.0, "task.a.own": 1.0},
        1: {"task.b.score": 0.0, "task.b.loss": 2.5, "task.b.n": 2.0, "task.b.own": 0.0},
    }
    rec = RoundRecord(server_round, lr=0.1, train={0: {"train-loss": 3.0 - server_round, "train-steps": 1.0}})
    rec.evaluate = evaluate
    rec.traffic = [Exchange("train", 0, 100, 40, 0, 0)]
    return rec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")  # one database for the module: creating one takes seconds


@pytest.fixture
def local_cfg(cfg, store):
    return replace(cfg, output=replace(cfg.output, dir=str(store), mlflow="local", mlflow_experiment="tests"))


def client_for(cfg):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg.output))


def run_through(cfg, run_dir, parent=None) -> MlflowLog:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"status": "completed"}))
    callback = MlflowLog(cfg.output, run_dir, parent)
    callback.on_run_start(cfg, None, None)
    for r, score in ((1, 0.25), (2, 0.75)):
        callback.on_round_end(record(r, score))
    callback.on_run_end(None)
    return callback


def test_a_run_logs_its_config_rounds_final_scores_and_files(local_cfg, store, tmp_path):
    callback = run_through(local_cfg, tmp_path / "run-1")
    mlflow = client_for(local_cfg)
    run = mlflow.get_run(callback.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-1"
    assert run.data.tags["method"] == local_cfg.method.name and run.data.tags["seed"] == str(local_cfg.seed)
    assert run.data.params["train.lr"] == str(local_cfg.train.lr)
    assert run.data.params["num_rounds"] == str(local_cfg.num_rounds)
    assert run.data.params["method.name"] == local_cfg.method.name
    history = mlflow.get_metric_history(callback.run_id, "task/a")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.75)]
    assert [m.value for m in mlflow.get_metric_history(callback.run_id, "train/loss")] == [2.0, 1.0]
    assert run.data.metrics["final/a"] == 0.75 and run.data.metrics["final/mean"] == pytest.approx(0.375)
    assert [a.path for a in mlflow.list_artifacts(callback.run_id)] == ["results.json"]
    # local: the database and the artifacts stay in output.dir
    assert (store / "mlflow.db").is_file() and (store / "mlruns").is_dir()


def test_a_sweep_is_one_parent_run_with_its_jobs_as_children(local_cfg, tmp_path):
    sweep_dir = tmp_path / "sweep"
    parent = sweep_parent(local_cfg.output, sweep_dir, "sweep")
    assert sweep_parent(local_cfg.output, sweep_dir, "sweep") == parent  # a resumed sweep: the same parent
    jobs = [run_through(local_cfg, sweep_dir / f"job-{i}", parent) for i in range(2)]
    mlflow = client_for(local_cfg)
    children = mlflow.search_runs(
        [mlflow.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert sorted(r.info.run_id for r in children) == sorted(j.run_id for j in jobs)


def test_a_failed_run_is_marked_failed(local_cfg, tmp_path):
    callback = MlflowLog(local_cfg.output, tmp_path / "run")
    callback.on_run_start(local_cfg, None, None)
    callback.fail()
    assert client_for(local_cfg).get_run(callback.run_id).info.status == "FAILED"


def test_params_are_flat_and_within_mlflows_limits():
    params = flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x" * 7000, "e": None, "f": {}})
    assert params == {"a.b": "1", "a.c": "[1, 2]", "d": "x" * 6000, "e": "null", "f": "{}"}


def test_without_mlflow_installed_the_run_stops_with_one_line(local_cfg, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(ConfigError, match=r"output.mlflow='local' needs MLflow: pip install -e '.\[mlflow\]'"):
        tracking.client(local_cfg.output)


def test_a_sweeps_jobs_share_the_sweep_folders_database_and_parent(tmp_path, monkeypatch):
    from fedrouter_app.cli.sweep import tracking as job_tracking

    monkeypatch.setenv(tracking.PARENT_ENV, "")  # restored (removed) when the test ends
    sweep_dir = tmp_path / "sweep"
    assert job_tracking(["method=fedit"], sweep_dir / "job-0") == []  # output.mlflow off: nothing
    extra = job_tracking(["method=fedit", "output.mlflow=local"], sweep_dir / "job-0")
    assert extra == [f"output.mlflow=sqlite:///{sweep_dir.resolve() / 'mlflow.db'}"]
    parent = os.environ[tracking.PARENT_ENV]
    assert job_tracking(["method=fedrouter", "output.mlflow=local"], sweep_dir / "job-1") == extra
    assert os.environ[tracking.PARENT_ENV] == parent
