"""The report's aggregation on hand-made run directories."""

import json
import math
import statistics

import pytest
import yaml

from fedrouter_app.report import build_report
from fedrouter_app.report.runs import find, load_run
from fedrouter_app.report.table import Stat, aggregate, relative_gain

CLIENTS, ROUNDS = 2, 3


def task_summary(score: float, loss: float = 1.0) -> dict:
    return {"loss": loss, "exact_match": score, "rouge1": score, "rougeL": score, "score": score}


def write_run(root, method, scenario, seed, *, own, all_, unseen=None, loss=1.0, up=100, routing=None, extra=()):
    """A run directory with just what the report reads."""
    path = root / f"{method}-{scenario}-s{seed}{''.join(extra)}"
    path.mkdir(parents=True)
    final = {
        "per_task": {"a": {"n": 4, **task_summary(own)}, "z": {"n": 4, **task_summary(unseen or 0.0)}},
        "mean": task_summary(all_, loss),
        "own_mean": task_summary(own),
        "other_mean": task_summary(all_),
        "seen_mean": task_summary(own),
        "unseen_mean": task_summary(unseen) if unseen is not None else {},
    }
    rounds = [
        {
            "round": r,
            "train": {"mean_loss": 2.0 / r},
            "evaluate": {"clients": {"0": {}}, **final} if r == ROUNDS else {"clients": {}},
            "strategy": {},
            "traffic": {"bytes_up": up * CLIENTS, "bytes_down": 2 * up * CLIENTS},
        }
        for r in range(1, ROUNDS + 1)
    ]
    if routing is not None:
        confusion = {"a": {"0": 4}, "z": {"0": 1, "1": 3}}
        rounds[-1]["strategy"] = {"evaluate": {"routing": {"global": {"accuracy": routing, "confusion": confusion}}}}
        clustering = {"n_global": 2, "assignment": {"0": [0], "1": [1]}, "cluster_sizes": {"0": [8], "1": [8]}}
        rounds[0]["strategy"] = {"setup": {"clustering": {**clustering, "majority_task": {"0": "a", "1": "z"}}}}
    config = {"seed": seed, "num_clients": CLIENTS, "num_rounds": ROUNDS, "method": {"name": method}}
    results = {
        "run": {
            "method": method,
            "scenario": scenario,
            "seed": seed,
            "status": "completed",
            "overrides": [f"method={method}", f"scenario={scenario}", f"seed={seed}", *extra],
        },
        "config": config,
        "tasks": {"all": ["a", "z"], "seen": ["a"], "unseen": ["z"]},
        "rounds": rounds,
        "final": final,
    }
    (path / "results.json").write_text(json.dumps(results))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "sweep"
    for seed, (own, all_, unseen) in enumerate([(0.2, 0.1, 0.0), (0.4, 0.3, 0.1)]):
        write_run(root, "fedit", "unseen", seed, own=own, all_=all_, unseen=unseen, up=100)
    for seed, (own, all_, unseen) in enumerate([(0.5, 0.4, 0.2), (0.7, 0.4, 0.3), (0.6, 0.4, 0.1)]):
        write_run(root, "router", "unseen", seed, own=own, all_=all_, unseen=unseen, up=300, routing=0.5 + seed / 10)
    write_run(root, "router", "unseen", 0, own=0.9, all_=0.9, unseen=0.9, extra=("train.lr=1e-3",))
    write_run(root, "local", "dual", 0, own=0.3, all_=0.3, up=0)
    failed = root / "9-broken-dual-s0"
    failed.mkdir()
    (failed / "job.json").write_text(json.dumps({"status": "failed", "overrides": ["method=broken"], "error": "E: x"}))
    return root


def test_stat_is_mean_and_sample_std_of_finite_values():
    stat = Stat.of([1.0, 2.0, math.nan, 4.0])
    assert stat.n == 3 and stat.mean == pytest.approx(7 / 3) and stat.std == pytest.approx(statistics.stdev([1, 2, 4]))
    assert Stat.of([0.5]).n == 1 and math.isnan(Stat.of([0.5]).std)
    assert Stat.of([math.nan]).n == 0


def test_relative_gain():
    assert relative_gain(0.3, 0.2) == pytest.approx(0.5)
    assert relative_gain(0.1, 0.2) == pytest.approx(-0.5)
    assert math.isnan(relative_gain(0.1, 0.0)) and math.isnan(relative_gain(math.nan, 0.2))


def test_rows_group_seeds_and_keep_variants_apart(runs_dir):
    run_dirs, jobs = find([runs_dir])
    assert len(run_dirs) == 7 and len(jobs) == 1
    rows = {(r.scenario, r.label): r for r in aggregate([load_run(p) for p in run_dirs])}
    assert set(rows) == {
        ("dual", "local"),
        ("unseen", "fedit"),
        ("unseen", "router"),
        ("unseen", "router [train.lr=1e-3]"),
    }
    router = rows[("unseen", "router")]
    assert router.seeds == [0, 1, 2]
    assert router.stats["own"].mean == pytest.approx(0.6) and router.stats["own"].std == pytest.approx(0.1)
    assert router.stats["unseen"].mean == pytest.approx(0.2)
    assert router.stats["routing"].mean == pytest.approx(0.6)
    # Bytes per client-round: every round's traffic over clients x rounds.
    assert router.stats["up"].mean == pytest.approx(300) and router.stats["down"].mean == pytest.approx(600)
    assert rows[("dual", "local")].stats["unseen"].n == 0 and rows[("unseen", "fedit")].stats["routing"].n == 0


def test_report_table_json_gains_and_figures(runs_dir, tmp_path):
    out = tmp_path / "report"
    text = build_report([runs_dir], out, reference="fedit").read_text()
    rows = {
        (r["scenario"], r["method"], r["variant"]): r for r in json.loads((out / "report.json").read_text())["rows"]
    }
    router = rows[("unseen", "router", "")]
    assert router["gain"]["own"] == pytest.approx((0.6 - 0.3) / 0.3)
    assert router["gain"]["unseen"] == pytest.approx((0.2 - 0.05) / 0.05)
    assert math.isnan(rows[("dual", "local", "")]["gain"]["own"])  # no fedit in that scenario
    line = next(row for row in text.splitlines() if row.startswith("| router |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["router", "0,1,2", "0.600 ± 0.100"]
    assert cells[-3:] == ["+100.0%", "+100.0%", "+300.0%"]
    assert "| fedit | 0,1 | 0.300 ± 0.141 |" in text
    assert "9-broken-dual-s0" in text and "E: x" in text
    names = {p.name for p in out.glob("*.png")}
    assert {"tasks-unseen.png", "curves-unseen.png", "bytes-dual.png"} <= names
    assert {"routing-router-unseen-global.png", "clusters-router-unseen.png"} <= names
    assert not any(n.startswith(("routing-fedit", "clusters-local")) for n in names)


def test_report_with_another_reference(runs_dir, tmp_path):
    build_report([runs_dir], tmp_path / "r", reference="router", with_figures=False)
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["rows"]
    fedit = next(r for r in rows if r["method"] == "fedit")
    assert fedit["gain"]["own"] == pytest.approx((0.3 - 0.6) / 0.6)
    assert not list((tmp_path / "r").glob("*.png"))


def test_report_without_runs_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no completed runs"):
        build_report([tmp_path], tmp_path / "out")
