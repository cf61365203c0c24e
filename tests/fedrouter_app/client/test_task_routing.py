"""Routing by task centroids on hand-made arrays: nearest target, pooled centroids, routing metrics and summary."""

import numpy as np
import pytest
from flwr.app import RecordDict

from fedrouter_app.client.client_env import ClientEnv
from fedrouter_app.client.task_routing import (
    check_route_metrics,
    nearest_targets,
    own_task_centroids,
    parse_route_metric,
    pooled_centroids,
    route_metric,
    routing_summary,
    stored_embeddings,
)
from fedrouter_app.data.partition import build_client_data
from fedrouter_app.federation.records import InvalidReplyError


def test_each_point_goes_to_the_target_of_its_nearest_centroid():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    points = np.array([[9.0, 1.0], [1.0, 8.0], [0.4, 0.4], [5.1, 0.0]], np.float32)
    assert nearest_targets(points, centroids, [7, 2, 5]) == [2, 5, 7, 2]
    assert nearest_targets(points[:0], centroids, [7, 2, 5]) == []
    with pytest.raises(ValueError, match="2 routing targets"):
        nearest_targets(points, centroids, [0, 1])


def test_pooled_centroid_is_the_size_weighted_mean_per_group():
    pooled = pooled_centroids(
        [
            ("a", np.array([0.0, 4.0]), 1),
            ("b", np.array([5.0, 5.0]), 2),
            ("a", np.array([4.0, 0.0]), 3),
        ]
    )
    np.testing.assert_allclose(pooled["a"], [3.0, 1.0])
    np.testing.assert_allclose(pooled["b"], [5.0, 5.0])
    assert pooled["a"].dtype == np.float32 and pooled_centroids([]) == {}


def test_route_metrics_round_trip_and_tasks_may_hold_dots():
    assert parse_route_metric(route_metric("qa.v2", 3)) == ("other", "qa.v2", 3)
    assert parse_route_metric(route_metric("copy", 0, own=True)) == ("own", "copy", 0)
    for bad in ("route.global.other.copy", "route.local.other.copy.1", "route.global.mine.copy.1", "x.copy.1"):
        assert parse_route_metric(bad) is None


@pytest.mark.parametrize(
    "metrics",
    [
        {"route.global.other.copy.9": 1},  # no such target
        {"route.global.other.evil.0": 1},  # no such task
        {"route.global.other.copy": 1},  # malformed
        {"route.global.other.copy.1": 0.5},  # not a count
        {"route.global.other.copy.1": -1},
    ],
)
def test_bad_route_metrics_are_refused(metrics):
    with pytest.raises(InvalidReplyError):
        check_route_metrics(metrics, ["copy", "reverse"], n_targets=2)


def test_good_route_metrics_pass():
    check_route_metrics({"route.global.other.copy.1": 3, "num-examples": 8, "task.copy.n": 4}, ["copy"], 2)


def test_routing_summary_counts_hits_of_covered_tasks_only():
    replies = [
        {route_metric("a", 0): 3, route_metric("a", 1): 1, route_metric("held_out", 1): 4},
        {route_metric("b", 1): 2, "num-examples": 9},
    ]
    summary = routing_summary(replies, {0: "a", 1: "b"})["global"]
    assert summary["accuracy_other"] == pytest.approx(5 / 6)
    assert summary["confusion"] == {"a": {"0": 3, "1": 1}, "b": {"1": 2}, "held_out": {"1": 4}}
    assert "accuracy" not in summary  # own tasks are never routed: no overall accuracy comparable to FedRouter's


def test_embeddings_and_centroids_are_computed_once_per_data(make_cfg, adapter_model, monkeypatch):
    import fedrouter_app.client.task_routing as routing

    cfg = make_cfg("method=fltac", "scenario=dual")

    def make_env(state=None):
        return ClientEnv(cfg=cfg, data=build_client_data(cfg, 0), state=RecordDict() if state is None else state)

    env = make_env()
    calls = []
    real = routing.embed_texts

    def counting(model, texts, **kwargs):
        calls.append(len(texts))
        return real(model, texts, **kwargs)

    monkeypatch.setattr(routing, "embed_texts", counting)
    centroids = own_task_centroids(env, "c")
    assert centroids.shape == (len(env.data.tasks), env.model().hidden_size)
    embeddings = real(env.model(), [ex.instruction for ex in env.data.train], batch_size=4)
    for j, task in enumerate(env.data.tasks):
        rows = [i for i, ex in enumerate(env.data.train) if ex.task == task]
        np.testing.assert_allclose(centroids[j], embeddings[rows].mean(axis=0), rtol=1e-4, atol=1e-5)
    test = env.data.test[:3]
    first = stored_embeddings(env, "e", test)
    again = make_env(env.state)
    np.testing.assert_array_equal(own_task_centroids(again, "c"), centroids)
    np.testing.assert_array_equal(stored_embeddings(again, "e", test), first)
    assert calls == [len(env.data.train), 3]
    # Other examples under the same name (the client's data changed): computed again.
    assert stored_embeddings(again, "e", env.data.test[:2]).shape[0] == 2 and calls[-1] == 2
