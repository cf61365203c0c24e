"""The report's aggregation, paired differences and tables on hand-made run directories."""

import importlib
import json
import math
import statistics
import sys

import pytest
import yaml

from fedrouter_app.report import build_report
from fedrouter_app.report.paired import paired_difference, t_half_width
from fedrouter_app.report.runs import find, load_run
from fedrouter_app.report.table import Stat, aggregate, relative_gain

CLIENTS, ROUNDS = 2, 3
# Student-t 0.975 quantiles from a printed table: 1 and 2 degrees of freedom.
T_1, T_2 = 12.7062, 4.3027


def task_summary(score: float, loss: float = 1.0) -> dict:
    return {"loss": loss, "exact_match": score, "rouge1": score, "rougeL": score, "score": score}


def final_summary(own: float, other: float, held: float, old_format: bool) -> dict:
    """Tasks a and b are each own to one client and other to the other; z is held out of training."""
    mixed = (own + other) / 2
    out = {
        "clients": {str(c): {"tasks": {t: {"n": 4.0} for t in "abz"}} for c in range(CLIENTS)},
        "per_task": {"a": {"n": 8, **task_summary(mixed)}, "b": {"n": 8, **task_summary(mixed)}},
        "own_per_task": {t: {"n": 4, **task_summary(own)} for t in "ab"},
        "other_per_task": {**{t: {"n": 4, **task_summary(other)} for t in "ab"}, "z": {"n": 8, **task_summary(held)}},
        "own_mean": task_summary(own),
        "unseen_mean": task_summary(held),
        "mean": task_summary((2 * mixed + held) / 3),
    }
    out["per_task"]["z"] = {"n": 8, **task_summary(held)}
    if not old_format:  # results written before other clients' tasks were recorded lack these two
        out["other_clients_per_task"] = {t: {"n": 4, **task_summary(other)} for t in "ab"}
        out["other_clients_mean"] = task_summary(other)
    return out


def write_run(root, method, scenario, seed, scores, *, up=100, routing=None, labels=None, old_format=False, extra=()):
    """A run directory with just what the report reads; ``scores``: (own, other clients', held-out)."""
    path = root / f"{method}-{scenario}-s{seed}{''.join(extra)}"
    path.mkdir(parents=True)
    final = final_summary(*scores, old_format=old_format)
    counts = {"train-steps": 4.0, "train-tokens": 100.0, "forward-tokens": 300.0}
    rounds = []
    for r in range(1, ROUNDS + 1):
        evaluated = r == ROUNDS
        rounds.append(
            {
                "round": r,
                "train": {"mean_loss": 2.0 / r, "clients": {str(c): {"train-steps": 4.0} for c in range(CLIENTS)}},
                "evaluate": {**final} if evaluated else {"clients": {}},
                "strategy": {},
                "traffic": {"bytes_up": up * CLIENTS, "bytes_down": 2 * up * CLIENTS, "exchanges": []},
            }
        )
        if not old_format:
            train = {
                "replies": CLIENTS,
                **{k: {"sum": CLIENTS * v, "mean": v, "clients": CLIENTS} for k, v in counts.items()},
            }
            forward = {"sum": CLIENTS * 60.0, "mean": 60.0, "clients": CLIENTS}
            rounds[-1]["compute"] = {
                "train": train,
                **({"evaluate": {"replies": 2, "forward-tokens": forward}} if evaluated else {}),
            }
    if routing is not None:
        confusion = {"a": {"0": 4}, "b": {"0": 1, "1": 3}}
        accuracy = {"accuracy": routing, "accuracy_own": 1.0, "accuracy_other": routing, "confusion": confusion}
        rounds[-1]["strategy"] = {"evaluate": {"routing": {"global": accuracy}}}
        local = {"0": {"ari": 1.0, "purity": 1.0}, "1": {"ari": 0.5, "purity": 0.9}}
        clustering = {"n_global": 2, "assignment": {"0": [0], "1": [1]}, "cluster_sizes": {"0": [8], "1": [8]}}
        clustering |= {"majority_task": {"0": "a", "1": "b"}, "global": {"ari": 0.9}, "local_mean": {"ari": 0.75}}
        rounds[0]["strategy"] = {"setup": {"clustering": {**clustering, "local": local}}}
    config = {
        "seed": seed,
        "num_clients": CLIENTS,
        "num_rounds": ROUNDS,
        "method": {"name": method},
        "eval": {"scope": "global"},
    }
    results = {
        "run": {
            "method": method,
            "scenario": scenario,
            "seed": seed,
            "status": "completed",
            "overrides": [f"method={method}", f"scenario={scenario}", f"seed={seed}", *extra],
        },
        "config": config,
        "tasks": {"all": ["a", "b", "z"], "seen": ["a", "b"], "unseen": ["z"]},
        "rounds": rounds,
        "final": final,
    }
    if labels is not None:
        results["uses_task_labels"] = labels
    (path / "results.json").write_text(json.dumps(results))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


# (own, other clients', held-out) per seed 0, 1, 2.
FEDIT = [(0.2, 0.1, 0.0), (0.4, 0.2, 0.1), (0.3, 0.0, 0.05)]
ROUTER = [(0.5, 0.4, 0.2), (0.8, 0.6, 0.3), (0.5, 0.5, 0.1)]
TAC = [(0.8, 0.1, 0.0), (0.9, 0.2, 0.0), (0.7, 0.15, 0.0)]
LOCAL = [(0.6, 0.0, 0.0), (0.5, 0.1, 0.0), (0.7, 0.0, 0.0)]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for seed in range(3):
        write_run(root, "fedit", "cross", seed, FEDIT[seed], labels=False)
        write_run(root, "router", "cross", seed, ROUTER[seed], up=300, routing=0.5 + seed / 10, labels=False)
        write_run(root, "tac", "cross", seed, TAC[seed], labels=True)
        # Older results: no label flag (the registry's `local` is label-free), no compute block.
        write_run(root, "local", "cross", seed, LOCAL[seed], up=0, old_format=True)
    write_run(root, "router", "cross", 0, (0.9, 0.9, 0.9), labels=False, extra=("train.lr=1e-3",))
    write_run(root, "mystery", "dual", 0, (0.3, 0.3, 0.3), old_format=True)
    failed = root / "9-broken-dual-s0"
    failed.mkdir()
    (failed / "job.json").write_text(json.dumps({"status": "failed", "overrides": ["method=broken"], "error": "E: x"}))
    return root


@pytest.fixture(scope="module")
def report(runs_dir, tmp_path_factory):
    """The report of ``runs_dir`` with ``router`` as the proposed method: (Markdown, JSON rows by label, JSON)."""
    out = tmp_path_factory.mktemp("report")
    text = build_report([runs_dir], out, reference="fedit", proposed="router", with_figures=False).read_text()
    data = json.loads((out / "report.json").read_text())
    rows = {(r["scenario"], r["label"]): r for r in data["rows"]}
    return text, rows, data


def cells(text: str, scenario: str, table_start: str, label: str) -> list[str]:
    """Cells of ``label``'s row in the first table after ``table_start`` in ``scenario``'s section."""
    section = text.split(f"### Scenario `{scenario}`", 1)[1].split("### Scenario", 1)[0]
    table = section.split(table_start, 1)[1]
    line = next(row for row in table.splitlines() if row.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_stat_is_mean_and_sample_std_of_finite_values():
    stat = Stat.of([1.0, 2.0, math.nan, 4.0])
    assert stat.n == 3 and stat.mean == pytest.approx(7 / 3) and stat.std == pytest.approx(statistics.stdev([1, 2, 4]))
    assert Stat.of([0.5]).n == 1 and math.isnan(Stat.of([0.5]).std)
    assert Stat.of([math.nan]).n == 0


def test_relative_gain():
    assert relative_gain(0.3, 0.2) == pytest.approx(0.5)
    assert relative_gain(0.1, 0.2) == pytest.approx(-0.5)
    assert math.isnan(relative_gain(0.1, 0.0)) and math.isnan(relative_gain(math.nan, 0.2))


def test_t_interval_matches_a_hand_computation():
    # Differences 0.3, 0.4, 0.2: mean 0.3, sample std 0.1, so the half-width is t(0.975, 2) x 0.1 / sqrt(3).
    assert t_half_width([0.3, 0.4, 0.2]) == pytest.approx(T_2 * 0.1 / math.sqrt(3), rel=1e-4)
    # 0.1 and 0.3: sample std sqrt(0.02), half-width t(0.975, 1) x sqrt(0.02) / sqrt(2) = t x 0.1.
    assert t_half_width([0.1, 0.3]) == pytest.approx(T_1 * 0.1, rel=1e-4)
    assert t_half_width([0.1, 0.3], confidence=0.9) < t_half_width([0.1, 0.3])
    assert math.isnan(t_half_width([0.5]))


def test_differences_are_paired_by_seed():
    values = {0: 0.5, 1: 0.8, 2: 0.5, 3: 0.9, 5: math.nan}
    against = {0: 0.2, 1: 0.4, 2: 0.3, 4: 0.0, 5: 0.1}
    diff = paired_difference(values, against, "x")
    # Seeds 3 and 4 have no partner, seed 5 no value: three pairs.
    assert diff.n == 3 and diff.per_seed == pytest.approx({0: 0.3, 1: 0.4, 2: 0.2})
    assert diff.mean == pytest.approx(0.3) and diff.half_width == pytest.approx(T_2 * 0.1 / math.sqrt(3), rel=1e-4)
    assert diff.low == pytest.approx(0.3 - diff.half_width) and diff.excludes_zero
    # -0.1, +0.3, -0.2: mean 0, the interval holds 0.
    assert not paired_difference({0: 0.5, 1: 0.8, 2: 0.5}, {0: 0.6, 1: 0.5, 2: 0.7}, "x").excludes_zero
    single = paired_difference({0: 0.5}, {0: 0.1}, "x")
    assert single.n == 1 and single.mean == pytest.approx(0.4) and not single.excludes_zero
    assert paired_difference({0: 0.5}, {1: 0.1}, "x").n == 0


def test_rows_group_seeds_keep_variants_apart_and_read_older_results(runs_dir):
    run_dirs, jobs = find([runs_dir])
    assert len(run_dirs) == 14 and len(jobs) == 1
    rows = {(r.scenario, r.label): r for r in aggregate([load_run(p) for p in run_dirs])}
    assert {label for scenario, label in rows if scenario == "cross"} == {
        "fedit",
        "local",
        "router",
        "router [train.lr=1e-3]",
        "tac",
    }
    router = rows[("cross", "router")]
    assert router.seeds == [0, 1, 2] and router.per_seed["own"] == pytest.approx({0: 0.5, 1: 0.8, 2: 0.5})
    assert router.stats["own"].mean == pytest.approx(0.6) and router.stats["own"].std == pytest.approx(math.sqrt(0.03))
    assert router.stats["held_out"].mean == pytest.approx(0.2) and router.stats["routing"].mean == pytest.approx(0.6)
    assert router.stats["ari_global"].mean == 0.9 and router.stats["ari_local_min"].mean == 0.5
    # Bytes and work per client-round: totals over clients x rounds (3 training rounds, one evaluation).
    assert router.stats["up"].mean == pytest.approx(300) and router.stats["down"].mean == pytest.approx(600)
    assert router.stats["train_steps"].mean == 4 and router.stats["train_tokens"].mean == 100
    assert router.stats["forward_tokens"].mean == pytest.approx((3 * 2 * 300 + 2 * 60) / 6)
    # Older results: other clients' tasks from `other` without the held-out task, steps from the clients'
    # metrics, tokens unknown; the label flag from the registered method.
    local = rows[("cross", "local")]
    assert local.stats["other_clients"].mean == pytest.approx(statistics.fmean(s[1] for s in LOCAL))
    assert local.stats["train_steps"].mean == 4 and local.stats["forward_tokens"].n == 0
    assert local.uses_task_labels is False and rows[("cross", "tac")].uses_task_labels is True
    assert rows[("dual", "mystery")].uses_task_labels is None  # unknown method, nothing recorded


def test_paired_differences_against_fedit_the_best_and_the_best_label_free_baseline(report):
    text, rows, data = report
    router = rows[("cross", "router")]["differences"]
    # Against FedIT, own tasks: 0.3, 0.4, 0.2.
    ref = router["reference"]["own"]
    assert ref["against"] == "fedit" and ref["n"] == 3 and ref["excludes_zero"]
    assert ref["mean"] == pytest.approx(0.3) and ref["half_width"] == pytest.approx(T_2 * 0.1 / math.sqrt(3), rel=1e-4)
    # The best baseline on own tasks is tac (0.8), told the tasks; the best label-free one is local (0.6).
    best, free = router["best_baseline"]["own"], router["best_label_free"]["own"]
    assert best["against"] == "tac" and best["mean"] == pytest.approx(-0.2) and not best["excludes_zero"]
    assert free["against"] == "local" and free["per_seed"] == pytest.approx({"0": -0.1, "1": 0.3, "2": -0.2})
    assert free["half_width"] == pytest.approx(T_2 * math.sqrt(0.07) / math.sqrt(3), rel=1e-4)
    # Other clients' tasks: tac (0.15) is the best baseline, fedit (0.1) the best label-free one.
    assert router["best_baseline"]["other_clients"]["against"] == "tac"
    assert router["best_label_free"]["other_clients"]["against"] == "fedit"
    assert data["scenarios"]["cross"]["best_baseline"]["own"] == {"label": "tac", "mean": pytest.approx(0.8)}
    assert data["scenarios"]["cross"]["best_label_free"]["other_clients"]["label"] == "fedit"
    # The proposed method's variant is no baseline: it has its own comparators, in its own variant or none.
    assert rows[("cross", "router [train.lr=1e-3]")]["differences"]["best_baseline"]["own"]["against"] == "tac"

    assert cells(text, "cross", "Paired differences against `fedit`", "router")[:4] == [
        "router",
        "yes",
        "3",
        f"+0.300 ± {T_2 * 0.1 / math.sqrt(3):.3f} *",
    ]
    best_table = cells(text, "cross", "Paired differences against the best baseline", "router")
    assert best_table[3] == f"-0.200 ± {T_2 * 0.1 / math.sqrt(3):.3f}"  # the interval holds 0: no mark
    assert cells(text, "cross", "Paired differences against the best baseline", "tac")[3] == "best"
    header = next(
        line
        for line in text.split("Paired differences against the best label-free")[1].splitlines()
        if line.startswith("| method")
    )
    assert "own tasks (P) vs `local`" in header and "other clients' tasks vs `fedit`" in header


def test_scores_table_names_the_generalisation_columns_and_keeps_gains(report):
    text, rows, _ = report
    router = rows[("cross", "router")]
    assert router["gain"]["own"] == pytest.approx((0.6 - 0.3) / 0.3)
    assert router["gain"]["other_clients"] == pytest.approx((0.5 - 0.1) / 0.1)
    assert router["own"]["per_seed"] == pytest.approx({"0": 0.5, "1": 0.8, "2": 0.5})
    assert math.isnan(rows[("dual", "mystery")]["gain"]["own"])  # no fedit in that scenario
    header = next(line for line in text.splitlines() if line.startswith("| method | label-free | seeds |"))
    assert "other clients' tasks" in header and "held-out tasks" in header
    assert "others' tasks" not in text and "unseen tasks" not in text
    row = cells(text, "cross", "| method | label-free | seeds |", "router")
    assert row[:4] == ["router", "yes", "0,1,2", f"0.600 ± {math.sqrt(0.03):.3f}"]
    assert cells(text, "cross", "| method | label-free | seeds |", "tac")[1] == "no"
    assert cells(text, "dual", "| method | label-free | seeds |", "mystery")[1] == "?"
    assert "9-broken-dual-s0" in text and "E: x" in text


def test_per_task_routing_and_cost_tables(report):
    text, rows, data = report
    scenario = data["scenarios"]["cross"]
    assert scenario["tasks"] == {"a": "own+other", "b": "own+other", "z": "held-out"}
    assert scenario["protocol"]["examples_per_task_and_client"] == {"min": 4.0, "max": 4.0}
    assert "Each client was scored on 4 test examples of each of the 3 tasks" in text
    tasks = rows[("cross", "router")]["tasks"]
    assert tasks["a"]["own"]["mean"] == pytest.approx(0.6) and tasks["a"]["other_clients"]["mean"] == pytest.approx(0.5)
    assert tasks["z"]["all"]["mean"] == pytest.approx(0.2) and tasks["z"]["other_clients"]["n"] == 0
    assert tasks["a"]["examples"] == 8
    assert cells(text, "cross", "Score per task on every client", "fedit")[1:] == [
        "0.200 ± 0.087",
        "0.200 ± 0.087",
        "0.050 ± 0.050",
    ]
    assert "| method | a (own+other) | b (own+other) | z (held-out) |" in text
    assert cells(text, "cross", "Routing and clustering", "router")[1:] == [
        "0.600 ± 0.100",
        "1.000 ± 0.000",
        "0.600 ± 0.100",
        "0.900 ± 0.000",
        "0.750 ± 0.000",
        "0.500 ± 0.000",
    ]
    assert "| tac |" not in text.split("Routing and clustering")[1].split("Cost per client-round")[0]
    assert cells(text, "cross", "Cost per client-round", "router")[1:] == ["300", "600", "4", "100", "320"]
    assert cells(text, "cross", "Cost per client-round", "local")[1:] == ["0", "0", "4", "-", "-"]


@pytest.mark.slow
def test_report_figures_and_another_reference(runs_dir, tmp_path):
    out = tmp_path / "r"
    build_report([runs_dir], out, reference="router", proposed="router")
    names = {p.name for p in out.glob("*.png")}
    assert {"tasks-cross.png", "curves-cross.png", "bytes-dual.png", "routing-router-cross-global.png"} <= names
    assert "clusters-router-cross.png" in names and not any(
        n.startswith(("routing-fedit", "clusters-local")) for n in names
    )
    rows = json.loads((out / "report.json").read_text())["rows"]
    fedit = next(r for r in rows if r["label"] == "fedit")
    assert fedit["gain"]["own"] == pytest.approx((0.3 - 0.6) / 0.6)
    assert fedit["differences"]["reference"]["own"]["against"] == "router"


def test_without_matplotlib_tables_are_written_and_figures_name_the_extra(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None in sys.modules: the import fails
    monkeypatch.delitem(sys.modules, "fedrouter_app.report.plots", raising=False)
    assert (build_report([runs_dir], tmp_path / "r", with_figures=False)).exists()
    with pytest.raises(ImportError, match=r"pip install 'fedrouter\[report\]'"):
        importlib.import_module("fedrouter_app.report.plots")


def test_report_without_runs_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no completed runs"):
        build_report([tmp_path], tmp_path / "out")


def test_a_job_run_again_counts_only_its_own_run(tmp_path):
    from fedrouter_app.report.runs import find

    job = tmp_path / "dual-fedit-s0"
    write_run(job, "fedit", "dual", 0, (0.1, 0.1, 0.1))  # an earlier attempt, left beside the new run
    new = write_run(job, "fedit", "dual", 0, (0.2, 0.2, 0.2), extra=("-again",))
    record = {"status": "completed", "overrides": ["method=fedit"], "run_dir": f"/elsewhere/{new.name}"}
    (job / "job.json").write_text(json.dumps(record))
    running = tmp_path / "dual-local-s0"
    write_run(running, "local", "dual", 0, (0.3, 0.3, 0.3))
    (running / "job.json").write_text(json.dumps({"status": "running", "overrides": ["method=local"]}))
    loose = write_run(tmp_path, "tac", "dual", 0, (0.4, 0.4, 0.4))
    runs, jobs = find([tmp_path])
    assert runs == sorted([new, loose]) and len(jobs) == 2


def test_job_time_sums_the_completed_jobs(tmp_path):
    from fedrouter_app.report.build import job_time

    records = [{"status": "completed", "seconds": 60.5}, {"status": "failed", "seconds": 5}, {"status": "completed"}]
    paths = []
    for i, record in enumerate(records):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(record))
    (tmp_path / "broken.json").write_text("{")
    assert job_time([*paths, tmp_path / "broken.json"]) == {"completed": 1, "seconds": 60.5}


def test_clustering_is_found_at_registration_or_after_the_first_training():
    from fedrouter_app.report.runs import registration_clustering

    at_setup = {"rounds": [{"strategy": {"setup": {"clustering": {"ari": 0.5}}}}]}
    after_training = {
        "rounds": [{"strategy": {"setup": {"registered": [0]}}}, {"strategy": {"train": {"clustering": {"ari": 1.0}}}}]
    }
    assert registration_clustering(at_setup) == {"ari": 0.5}
    assert registration_clustering(after_training) == {"ari": 1.0}
    assert registration_clustering({"rounds": [{"strategy": {}}]}) == {}
