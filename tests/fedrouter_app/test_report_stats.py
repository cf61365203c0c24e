"""The report's statistics on hand-made data: bootstrap intervals, Holm's verdicts, declared comparators, protocol."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from fedrouter_app.federation.predictions_file import PREDICTIONS_FILE
from fedrouter_app.federation.results import summarize_round
from fedrouter_app.report import build_report
from fedrouter_app.report.bootstrap import PairedBootstrap, column_score, paired_bootstrap, percentile_interval
from fedrouter_app.report.declaration import Declaration
from fedrouter_app.report.headline import headline
from fedrouter_app.report.runs import load_run
from fedrouter_app.report.table import aggregate
from fedrouter_app.report.verdicts import HOLDS, NOT_HOLD, REVERSED, holm, judge
from fedrouter_app.schema.checks import ConfigError

# Client 0 trains task a, clients 1-3 task b; z is held out; every client is tested on every task, K items each.
OWNER = {0: "a", 1: "b", 2: "b", 3: "b"}
K = 6
DECLARED = {
    "proposed": "router",
    "comparators": ["fedit", "good", "same"],
    "label_free_baseline": "same",
    "claims": ["cross:all", "cross:held_out"],
}


def item_scores(level: float, seed: int, salt: int = 0) -> dict[tuple[int, str], list[float]]:
    """Per (client, task), K scores in [0, 1]: ``level`` plus a seed effect and a fixed per-item pattern."""
    rng = np.random.default_rng(1000 * seed + 7)  # the same items' difficulty for every method of a seed
    out = {}
    for client in OWNER:
        for task in "abz":
            difficulty = rng.uniform(-0.2, 0.2, K)
            noise = np.random.default_rng([seed, client, ord(task), salt]).uniform(-0.05, 0.05, K)
            out[(client, task)] = list(np.clip(level + 0.05 * seed + difficulty + noise, 0, 1).round(6))
    return out


def write_run(root, method, seed, scores, *, predictions=True, declared=None, labels=False, views=None):
    """A completed run whose results.json pools ``scores`` as the server would, and their predictions.jsonl.

    ``views``: alternative scorings of the same items, view name -> shift added to every item's score.
    """
    path = root / f"{method}-cross-s{seed}"
    path.mkdir(parents=True)
    evaluate, lines = {}, []
    for client, own_task in OWNER.items():
        metrics: dict[str, float] = {}
        index = 0
        for task in "abz":
            values = scores[(client, task)]
            own = float(task == own_task)
            for v in values:
                where = {"round": 2, "client": client, "view": "", "index": index, "task": task, "own": bool(own)}
                lines.append(where | {"score": v, "exact_match": v, "rougeL": v, "loss": 1.0})
                index += 1
            for view, shift in (views or {}).items():
                shifted = [round(v + shift, 6) for v in values]
                for i, v in enumerate(shifted):
                    where = {"round": 2, "client": client, "view": view, "index": index - len(values) + i}
                    where |= {"task": task, "own": bool(own)}
                    lines.append(where | {"score": v, "exact_match": v, "rougeL": v, "loss": 1.0})
                mean = sum(shifted) / len(shifted)
                counts = {"n": len(values), "own": own, "loss": 1.0}
                metrics |= {f"{view}/task.{task}.{k}": v for k, v in counts.items()}
                metrics |= {f"{view}/task.{task}.{k}": mean for k in ("score", "exact_match", "rouge1", "rougeL")}
            mean = sum(values) / len(values)
            metrics |= {f"task.{task}.{k}": v for k, v in {"n": len(values), "own": own, "loss": 1.0}.items()}
            metrics |= {f"task.{task}.{k}": mean for k in ("score", "exact_match", "rouge1", "rougeL")}
        evaluate[client] = metrics
    final = summarize_round(evaluate, {"z"})
    final["clients"] = {str(c): {"tasks": {}} for c in OWNER}
    config = {"seed": seed, "num_clients": 4, "num_rounds": 2, "method": {"name": method}, "eval": {"scope": "global"}}
    if declared:
        config["report"] = declared
    results = {
        "run": {"method": method, "scenario": "cross", "seed": seed, "status": "completed", "overrides": []},
        "config": config,
        "tasks": {"all": list("abz"), "seen": ["a", "b"], "unseen": ["z"], "train_clients": {"a": 1, "b": 3, "z": 0}},
        "uses_task_labels": labels,
        "rounds": [{"round": 1, "evaluate": {"clients": {}}}, {"round": 2, "evaluate": final}],
        "final": final,
    }
    (path / "results.json").write_text(json.dumps(results))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if predictions:
        (path / PREDICTIONS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """router ahead of fedit, behind `good` (the best baseline, told the tasks), level with `same` (its copy)."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in range(3):
        router = item_scores(0.5, seed)
        write_run(root, "router", seed, router, declared=DECLARED)
        write_run(root, "same", seed, router, declared=DECLARED)
        write_run(root, "fedit", seed, item_scores(0.2, seed, salt=1), declared=DECLARED)
        write_run(root, "good", seed, item_scores(0.8, seed, salt=2), declared=DECLARED, labels=True)
        write_run(root, "old", seed, item_scores(0.3, seed, salt=3), predictions=False, declared=DECLARED)
    return root


@pytest.fixture(scope="module")
def rows_and_bootstrap(sweep):
    runs = [load_run(p) for p in sorted(sweep.iterdir())]
    rows = {r.method: r for r in aggregate(runs)}
    return rows, PairedBootstrap(runs, resamples=1000)


def test_item_scores_reproduce_the_columns_the_report_reads(rows_and_bootstrap):
    _, bootstrap = rows_and_bootstrap
    run = bootstrap.runs[("cross", "router", "")][1][0]
    items = bootstrap.items(run)
    for column in ("own", "other_clients", "held_out", "all"):
        _, task, score = items.column(column)
        assert column_score(task, score) == pytest.approx(run.metrics[column], abs=1e-9)
    assert items.columns["held_out"].sum() == 4 * K and items.columns["own"].sum() == 4 * K


def test_identical_methods_give_a_zero_width_interval_at_zero(rows_and_bootstrap):
    rows, bootstrap = rows_and_bootstrap
    diff = bootstrap.compare(rows["router"], rows["same"], "all")
    assert diff.method == "bootstrap" and diff.interval == (0.0, 0.0) and diff.mean == 0 and diff.p_value == 1.0


def test_bootstrap_differences_keep_the_reported_mean_and_fall_back_without_predictions(rows_and_bootstrap):
    rows, bootstrap = rows_and_bootstrap
    ahead = bootstrap.compare(rows["router"], rows["fedit"], "all")
    reported = [rows["router"].per_seed["all"][s] - rows["fedit"].per_seed["all"][s] for s in range(3)]
    assert ahead.method == "bootstrap" and ahead.mean == pytest.approx(np.mean(reported))
    assert 0 < ahead.low < ahead.mean < ahead.high and ahead.p_value < 0.01 and ahead.resamples == 1000
    old = bootstrap.compare(rows["router"], rows["old"], "all")
    assert old.method == "student-t" and old.interval is None and "no predictions" in old.note
    assert old.half_width > 0 and old.p_value == pytest.approx(old.p_value)  # a Student-t p-value


def synthetic(seeds: int, true_diff: float, rng: np.random.Generator, spread: bool = False):
    """Per seed: tasks of 2 x 25 items, and both methods' scores; the per-seed difference varies around the truth
    (drawn, or with ``spread`` evenly spaced over +-0.05, so that few seeds are as spread as many)."""
    tasks, x, y = [], [], []
    for s in range(seeds):
        task = np.repeat([0, 1], 25)
        base = rng.uniform(0.2, 0.6, 50)
        # What this seed's data do to the difference.
        shift = true_diff + (np.linspace(-0.05, 0.05, seeds)[s] if spread else rng.normal(0, 0.03))
        tasks.append(task)
        x.append(base + shift + rng.normal(0, 0.05, 50))
        y.append(base)
    return tasks, x, y


@pytest.mark.slow
def test_the_interval_covers_the_true_difference_on_synthetic_data():
    rng = np.random.default_rng(0)
    covered = 0
    for replication in range(40):
        stat = paired_bootstrap(*synthetic(10, 0.1, rng), resamples=400, seed=replication)
        low, high = percentile_interval(stat)
        covered += low <= 0.1 <= high
    assert covered >= 34  # nominal 95%: 38 of 40 expected


def test_the_interval_is_wider_with_fewer_seeds():
    few = percentile_interval(paired_bootstrap(*synthetic(3, 0.1, np.random.default_rng(3), True), resamples=1000))
    tasks, x, y = synthetic(12, 0.1, np.random.default_rng(3), True)
    many = percentile_interval(paired_bootstrap(tasks, x, y, resamples=1000))
    assert few[0] < 0.1 < few[1] and many[0] < 0.1 < many[1]
    assert few[1] - few[0] > 1.5 * (many[1] - many[0])
    same = paired_bootstrap(tasks, x, x, resamples=200)  # pairing: a method against itself
    assert np.all(same == 0)


def test_holm_step_down_on_a_hand_made_list():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan]) == pytest.approx([1.0, 1.0]) and holm([]) == []
    assert holm([0.001] * 3) == pytest.approx([0.003] * 3)


def test_verdicts_on_declared_pairs(rows_and_bootstrap):
    rows, bootstrap = rows_and_bootstrap
    declaration = Declaration.from_mapping(DECLARED, "test")
    verdicts = judge(list(rows.values()), declaration, bootstrap.compare)
    assert len(verdicts) == 2 * 3  # claims x comparators (the label-free baseline listed once)
    by = {(v.column, v.comparator): v.verdict for v in verdicts}
    assert by[("all", "fedit")] == HOLDS and by[("all", "good")] == REVERSED and by[("all", "same")] == NOT_HOLD
    assert all(v.p_holm >= v.difference.p_value for v in verdicts if v.difference)


def test_the_report_uses_the_declared_comparators_and_records_the_protocol(sweep, tmp_path):
    build_report([sweep], tmp_path, with_figures=False, resamples=500)
    data = json.loads((tmp_path / "report.json").read_text())
    text = (tmp_path / "report.md").read_text()
    assert data["declaration"]["comparators"] == ["fedit", "good", "same"] and data["proposed"] == "router"
    router = next(r for r in data["rows"] if r["method"] == "router")
    assert set(router["differences"]) == {"reference", "declared"}
    assert set(router["differences"]["declared"]) == {"fedit", "good", "same"}
    # Without a declaration `good` would be the best baseline; with one, no best is picked at all.
    assert "best_baseline" not in data["scenarios"]["cross"] and "best baseline" not in text.split("### Declared")[1]
    assert [v["verdict"] for v in data["verdicts"] if v["column"] == "all"] == [HOLDS, REVERSED, NOT_HOLD]
    assert "### Declared claims" in text and "**reversed**" in text and data["interval"]["resamples"] == 500
    protocol = data["scenarios"]["cross"]["protocol"]
    # Own tasks: task a has client 0's K items; other clients' tasks: b has client 0's K items.
    assert protocol["seeds"] == 3 and protocol["seed_values"] == [0, 1, 2]
    assert protocol["test_items_per_task"] == K and protocol["test_items_per_task_by_column"]["held_out"] == 4 * K
    assert protocol["clients_per_task"] == 1 and protocol["clients_per_task_source"] == "assignment"
    assert f"at least {K} test items per task; at least 1 client trains each" in text
    assert "Student-t over seeds (±) for 4 cells (`old` seed 0 has no predictions" in text
    # The headline shows the declared claims and comparators with their verdicts when no claim is named.
    lines = headline(data, []).splitlines()
    assert lines[2].startswith("| method | label-free | all tasks (`cross`) | held-out tasks (`cross`) |")
    good = next(line for line in lines if line.startswith("| vs `good`"))
    assert good.count("**reversed**") == 2 and "[-0.3" in good
    assert next(line for line in lines if line.startswith("| vs `same` (label-free baseline)")).count("does not hold")


def test_a_preset_declares_for_runs_that_did_not_and_must_agree_with_them(sweep, tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"report": {**DECLARED, "comparators": ["fedit"]}}))
    with pytest.raises(ValueError, match="declares another comparison"):
        build_report([sweep], tmp_path / "r", with_figures=False, preset=preset, resamples=200)
    with pytest.raises(ValueError, match="differs from the declared"):
        build_report([sweep], tmp_path / "r", with_figures=False, proposed="fedit", resamples=200)
    with pytest.raises(ValueError, match="column one of"):
        Declaration.from_mapping({**DECLARED, "claims": ["cross:bogus"]}, "x")
    assert Declaration.from_mapping({"comparators": []}, "x") is None


def test_a_declaration_and_the_prediction_settings_are_checked_when_a_config_is_composed(make_cfg):
    with pytest.raises(ConfigError, match=r"report\.proposed needs report\.claims"):
        make_cfg("report.proposed=fedrouter")
    with pytest.raises(ConfigError, match="column one of own, other_clients, held_out, all"):
        make_cfg("report.proposed=fedrouter", "report.comparators=[fedit]", "report.claims=[dual:bogus]")
    with pytest.raises(ConfigError, match="cannot be its own comparator"):
        make_cfg("report.proposed=fedit", "report.comparators=[fedit]", "report.claims=[dual:all]")
    with pytest.raises(ConfigError, match=r"output\.save_predictions must be one of final, all, off"):
        make_cfg("output.save_predictions=sometimes")


def test_a_declared_view_is_a_row_of_its_own_compared_on_the_same_items(tmp_path):
    declared = {**DECLARED, "views": ["router:better"]}
    for seed in range(3):
        write_run(tmp_path, "router", seed, item_scores(0.5, seed), declared=declared, views={"better": 0.1})
        write_run(tmp_path, "fedit", seed, item_scores(0.2, seed, salt=1), declared=declared)
    out = tmp_path / "report"
    build_report([tmp_path], out, with_figures=False, resamples=500)
    report = json.loads((out / "report.json").read_text())
    assert "router:better" in {row["method"] for row in report["rows"]}
    by = {(v["scenario"], v["column"], v["against"]): v["difference"] for v in report["views"]}
    # Every item's score moved by +0.1 in the view: exactly +0.1 against the proposed method, in every resample.
    own = by[("cross", "all", "router")]
    assert own["mean"] == pytest.approx(0.1, abs=1e-6) and own["low"] == pytest.approx(0.1, abs=1e-6)
    # From the view's own predictions, paired item by item with the main scoring of the same runs.
    assert own["method"] == "bootstrap" and by[("cross", "all", "fedit")]["method"] == "bootstrap"
    assert by[("cross", "all", "fedit")]["mean"] == pytest.approx(0.3 + 0.1, abs=0.02)
    assert "### Alternative scorings" in (out / "report.md").read_text()


def test_the_diagnosis_of_held_out_samples_is_averaged_over_seeds_beside_every_method(tmp_path):
    for seed in range(2):
        path = write_run(tmp_path, "router", seed, item_scores(0.5, seed), declared=DECLARED)
        results = json.loads((path / "results.json").read_text())
        diagnosis = {"n": 24.0, "routed": 0.1, "average": 0.3 + 0.1 * seed, "base": 0.2, "oracle": 0.6}
        diagnosis["cluster"] = {"0": 0.1, "1": 0.4 + 0.1 * seed}
        results["rounds"][-1]["strategy"] = {"evaluate": {"diagnosis": {"z": diagnosis}}}
        (path / "results.json").write_text(json.dumps(results))
        write_run(tmp_path, "fedit", seed, item_scores(0.2, seed, salt=1), declared=DECLARED)
    out = tmp_path / "report"
    build_report([tmp_path], out, with_figures=False, resamples=200)
    (entry,) = json.loads((out / "report.json").read_text())["diagnosis"]
    assert (entry["scenario"], entry["method"], entry["task"], entry["seeds"]) == ("cross", "router", "z", 2)
    assert entry["best_cluster"] == pytest.approx(0.45) and entry["average"] == pytest.approx(0.35)
    assert entry["oracle_gap"] == pytest.approx(0.5)
    assert set(entry["methods"]) == {"router", "fedit"}
    assert "### Why routing fails on held-out samples" in (out / "report.md").read_text()


def test_the_floor_of_a_closed_task_is_its_commonest_answer_and_every_task_is_checked_for_signal(sweep, tmp_path):
    from fedrouter_app.report.signal import floor_of

    assert floor_of(["yes", "no", "yes", "yes"]) == 0.75
    assert floor_of([f"headline {i}" for i in range(20)]) == 0.0  # generated: no answer is worth anything alone
    assert floor_of([]) == 0.0
    out = tmp_path / "report"
    build_report([sweep], out, with_figures=False, resamples=200)
    entries = {(e["scenario"], e["task"]): e for e in json.loads((out / "report.json").read_text())["signal"]}
    assert set(entries) == {("cross", "a"), ("cross", "b"), ("cross", "z")}
    # The best row on every task is `good` (level 0.8), far above a floor of 0 for these reference-less items.
    assert all(e["best"] == "good" and e["carries_signal"] for e in entries.values())
    assert "### Does every task carry signal?" in (out / "report.md").read_text()
