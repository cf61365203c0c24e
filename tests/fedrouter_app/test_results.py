import math

import pytest

from fedrouter_app.results import format_table, parse_task_metrics, round_to_json, summarize_evaluation
from fedrouter_app.rounds import Exchange, RoundRecord


def metrics(task_values: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """task -> (n, score, own)"""
    out = {"partition-id": 0.0}
    for task, (n, score, own) in task_values.items():
        out.update({f"task.{task}.{m}": score for m in ("loss", "exact_match", "rouge1", "rougeL", "score")})
        out.update({f"task.{task}.n": n, f"task.{task}.own": own})
    return out


def test_parse_task_metrics():
    parsed = parse_task_metrics({"task.add.loss": 1.0, "task.data_to_text.n": 4.0, "partition-id": 3.0})
    assert parsed == {"add": {"loss": 1.0}, "data_to_text": {"n": 4.0}}


def test_pooling_is_example_weighted_within_a_task_and_uniform_across_tasks():
    summary = summarize_evaluation(
        {0: metrics({"a": (1, 1.0, 1), "b": (2, 0.0, 1)}), 1: metrics({"a": (3, 0.0, 1), "b": (2, 1.0, 0)})}
    )
    assert summary["per_task"]["a"]["score"] == pytest.approx(0.25)
    assert summary["per_task"]["b"]["score"] == pytest.approx(0.5)
    assert summary["mean"]["score"] == pytest.approx(0.375)
    assert summary["own_per_task"]["b"]["score"] == 0.0
    assert summary["other_per_task"] == {
        "b": {"n": 2, **{k: 1.0 for k in ("loss", "exact_match", "rouge1", "rougeL", "score")}}
    }
    assert "a" not in summary["other_per_task"]


def test_round_json_counts_bytes_per_client_and_phase():
    record = RoundRecord(server_round=1, lr=0.1, train={0: {"train-loss": 2.0, "train-steps": 3.0}})
    record.traffic = [Exchange("train", 0, 100, 100, 120, 120), Exchange("evaluate", 0, 100, 0, 120, 0)]
    out = round_to_json(record)
    assert out["traffic"]["clients"]["0"]["train"]["bytes_up"] == 100
    assert out["traffic"]["clients"]["0"]["evaluate"]["bytes_down"] == 100
    assert out["traffic"]["bytes_down"] == 200 and out["train"]["mean_loss"] == 2.0
    assert math.isnan(round_to_json(RoundRecord(server_round=0, lr=0.0))["train"]["mean_loss"])


def test_table_lists_every_task_and_the_mean():
    table = format_table(summarize_evaluation({0: metrics({"a": (1, 1.0, 1), "b": (1, 0.5, 1)})}))
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["task", "n"]
    assert lines[2].startswith("a") and lines[3].startswith("b") and lines[-1].startswith("mean")


def test_seen_unseen_split_is_federation_level():
    # Client 0 trains on a, client 1 on b; nobody trains on c (held out of all training).
    evaluate = {
        0: metrics({"a": (2, 1.0, 1), "b": (2, 0.0, 0), "c": (2, 0.5, 0)}),
        1: metrics({"a": (2, 0.0, 0), "b": (2, 1.0, 1), "c": (2, 0.0, 0)}),
    }
    summary = summarize_evaluation(evaluate, unseen={"c"})
    assert set(summary["seen_per_task"]) == {"a", "b"} and set(summary["unseen_per_task"]) == {"c"}
    assert summary["seen_mean"]["score"] == pytest.approx(0.5)
    assert summary["unseen_mean"]["score"] == pytest.approx(0.25)
    # "other" is per client: it mixes tasks other clients trained on with the held-out one.
    assert set(summary["other_per_task"]) == {"a", "b", "c"}
    assert "seen_mean" not in summarize_evaluation(evaluate)  # only when the unseen set is known
    record = RoundRecord(server_round=1, lr=0.1, evaluate=evaluate)
    out = round_to_json(record, unseen=("c",))["evaluate"]
    assert out["unseen_mean"]["score"] == pytest.approx(0.25) and out["mean"] == summary["mean"]
    assert round_to_json(record, unseen=())["evaluate"]["unseen_per_task"] == {}
