"""The drift report on hand-made results: per-round own-task scores of drifting and staying clients, per variant."""

import json
import math

import pytest

from fedrouter_app.data.partition import drifting_clients
from fedrouter_app.report.drift import build, main, own_score

MOVERS = drifting_clients(0, 4, 0.5)  # seed 0's; every run here drifts from round 3 of 4 (half-way)


def test_own_score_pools_each_task_over_its_clients_then_averages_tasks():
    clients = {
        "0": {"tasks": {"a": {"score": 1.0, "n": 3, "own": 1.0}, "b": {"score": 0.0, "n": 2, "own": 0.0}}},
        "1": {"tasks": {"a": {"score": 0.0, "n": 1, "own": 1.0}, "c": {"score": 0.5, "n": 2, "own": 1.0}}},
    }
    assert own_score(clients) == pytest.approx((0.75 + 0.5) / 2)  # b is no client's own task
    assert own_score(clients, [1]) == pytest.approx((0.0 + 0.5) / 2)
    assert math.isnan(own_score(clients, [7]))


def write_run(root, name, method, seed, score, drift_check=None, reregistered=None):
    """A run of 4 rounds: drifting clients score ``score(r)`` on their own task, staying ones 1.0."""
    movers = drifting_clients(seed, 4, 0.5)
    rounds = []
    for r in range(1, 5):
        clients = {
            str(c): {"tasks": {f"t{c}": {"score": score(r) if c in movers else 1.0, "n": 4, "own": 1.0}}}
            for c in range(4)
        }
        strategy = {"train": {"reregistered": {str(c): [0] for c in movers}}} if r == reregistered else {}
        rounds.append({"round": r, "evaluate": {"clients": clients}, "strategy": strategy})
    method_cfg = {"name": "fedrouter" if "fedrouter" in method else method}
    if drift_check is not None:
        method_cfg["drift_check"] = drift_check
    config = {
        "seed": seed,
        "num_clients": 4,
        "num_rounds": 4,
        "method": method_cfg,
        "scenario": {"name": "drift", "drift": {"round": None, "fraction": 0.5, "offset": None}},
    }
    run = root / name / "run"
    run.mkdir(parents=True)
    info = {"status": "completed", "seed": seed, "scenario": "drift", "overrides": [f"method={method}", f"seed={seed}"]}
    (run / "results.json").write_text(json.dumps({"run": info, "config": config, "rounds": rounds}))


def test_scores_before_at_and_after_the_drift_per_variant(tmp_path):
    write_run(tmp_path, "a", "fedrouter_drift", 0, lambda r: 0.8 if r < 3 else 0.2 * r - 0.4, True, reregistered=3)
    write_run(tmp_path, "b", "fedit", 0, lambda r: 0.6 if r < 3 else 0.1)
    write_run(tmp_path, "c", "fedit", 1, lambda r: 0.4 if r < 3 else 0.3)
    write_run(tmp_path, "d", "fedrouter", 0, lambda r: 0.5, True)  # drift_check set without the preset
    variants = build([tmp_path])["variants"]
    assert sorted(variants) == ["fedit", "fedrouter+drift_check", "fedrouter_drift"]
    drift = variants["fedrouter_drift"]
    assert drift["drift_rounds"] == [3] and drift["drifting"] == {"0": list(MOVERS)}
    assert drift["before"]["drifting"]["mean"] == pytest.approx(0.8)
    assert drift["at"]["drifting"]["mean"] == pytest.approx(0.2)
    assert drift["final"]["drifting"]["mean"] == pytest.approx(0.4)
    assert drift["at"]["staying"]["mean"] == 1.0 and drift["at"]["all"]["mean"] == pytest.approx(0.6)
    assert drift["reregistered"] == {"3": float(len(MOVERS))}
    fedit = variants["fedit"]
    assert fedit["seeds"] == [0, 1]
    assert fedit["rounds"]["2"]["drifting"]["mean"] == pytest.approx(0.5)
    assert fedit["rounds"]["2"]["drifting"]["std"] == pytest.approx(math.sqrt(0.02))
    assert fedit["at"]["drifting"]["mean"] == pytest.approx(0.2) and fedit["reregistered"] == {}


def test_the_command_writes_json_and_prints_tables(tmp_path, capsys):
    write_run(tmp_path, "a", "fedit", 0, lambda r: 0.5)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "drift from round 3" in printed and "fedit" in printed and "staying" in printed
    saved = json.loads((tmp_path / "drift_report.json").read_text())
    assert saved["variants"]["fedit"]["final"]["all"]["mean"] == pytest.approx(0.75)
    page = tmp_path / "drift.md"
    assert main([str(tmp_path), "--markdown", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Data drift") and f"python -m fedrouter_app.report.drift {tmp_path}" in text
    assert "drift from round 3" in text


def test_runs_without_a_drift_are_no_drift_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = {"seed": 0, "num_clients": 4, "num_rounds": 2, "method": {"name": "fedit"}, "scenario": {"name": "dual"}}
    (run / "results.json").write_text(json.dumps({"run": {"status": "completed"}, "config": config, "rounds": []}))
    assert main([str(tmp_path)]) == 2
    assert "no run with a drifting scenario" in capsys.readouterr().err
