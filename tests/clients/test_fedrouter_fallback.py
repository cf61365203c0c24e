"""FedRouter's evaluation extras on a real client: the router fallback view and the routing diagnosis."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.client.client_env import ROUTE_SLOT
from fedrouter_app.clients.fedrouter.client import CLUSTERS, FedRouterClient, LocalClusters
from fedrouter_app.clients.fedrouter.fallback import FALLBACK_VIEW, THRESHOLD_METRIC, TRAIN_EMBEDDINGS
from fedrouter_app.federation.records import CENTROIDS, CONFIG, adapter_record, matrix_record
from fedrouter_app.federation.routing_fallback import calibrate
from fedrouter_app.strategies.fedrouter.config import global_adapter_name

DUAL = ("method=fedrouter", "scenario=dual", "scenario.train_examples_per_client=48")
N_CLUSTERS = 3


def registered(make_env, *overrides: str):
    env = make_env(*DUAL, *overrides)
    client = FedRouterClient(env)
    client.handle("query", "register", RecordDict())
    return env, client


def adapters(env) -> dict[int, dict[str, np.ndarray]]:
    """Three distinct adapters (B != 0), so every mixture scores differently from the base model."""
    rng = np.random.default_rng(7)
    init = env.initial_adapter()
    return {
        k: {name: v + rng.normal(scale=0.2, size=v.shape).astype(np.float32) for name, v in init.items()}
        for k in range(N_CLUSTERS)
    }


def evaluation(env) -> RecordDict:
    """Centroids: the client's own two plus a third between them, shifted; one adapter each."""
    own = LocalClusters.from_record(env.state[CLUSTERS]).centroids
    centroids = np.concatenate([own, own.mean(axis=0, keepdims=True) + 0.5])
    content = RecordDict({global_adapter_name(k): adapter_record(s) for k, s in adapters(env).items()})
    content[CONFIG] = ConfigRecord(
        {"server-round": 1, "num-rounds": 2, "lr": 3e-3, "fedrouter.map": [0, 1], "fedrouter.router": "global"}
    )
    content[CENTROIDS] = matrix_record(CENTROIDS, centroids)
    return content


def evaluate(client, env) -> dict[str, float]:
    return dict(client.handle("evaluate", "default", evaluation(env))["metrics"])


def plain(metrics: dict[str, float]) -> dict[str, float]:
    """What the paper's routing reports (everything but the extras)."""
    return {k: v for k, v in metrics.items() if k.startswith(("task.", "router-global/", "router-local/", "route."))}


@pytest.mark.slow
def test_none_is_unchanged_and_the_extras_leave_the_plain_views_as_they_were(make_env):
    env, client = registered(make_env, "method.router_fallback=none", "method.diagnose_routing=off")
    before = evaluate(client, env)
    assert not any(k.startswith(("fallback", "diag.", f"{FALLBACK_VIEW}/")) for k in before)
    assert TRAIN_EMBEDDINGS not in env.state.array_records  # nothing kept with the fallback off
    env2, client2 = registered(make_env, "method.router_fallback=soft", "method.diagnose_routing=all")
    after = evaluate(client2, env2)
    assert plain(after) == plain(before)


@pytest.mark.slow
def test_calibration_is_on_the_kept_training_embeddings(make_env):
    env, client = registered(make_env, "method.router_fallback=soft")
    kept = env.state[TRAIN_EMBEDDINGS]["embeddings"].numpy()
    np.testing.assert_array_equal(kept, client.embed([ex.instruction for ex in env.data.train]))
    metrics = evaluate(client, env)
    centroids = evaluation(env)[CENTROIDS][CENTROIDS].numpy()
    assert metrics[THRESHOLD_METRIC] == pytest.approx(calibrate(kept, centroids, 0.95).threshold)


@pytest.mark.slow
def test_a_huge_margin_routes_everything_and_the_view_is_the_routed_one(make_env):
    env, client = registered(make_env, "method.router_fallback=soft", "method.fallback_margin=1e6")
    metrics = evaluate(client, env)
    for task in env.data.tasks:
        assert metrics[f"fallback.own.{task}.fallback"] == 0
        assert metrics[f"fallback.own.{task}.routed"] == metrics[f"task.{task}.n"]
    routed = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("router-global/")}
    assert {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{FALLBACK_VIEW}/")} == routed


@pytest.mark.slow
def test_a_tiny_margin_answers_everything_with_the_average_in_one_pass(make_env):
    env, client = registered(make_env, "method.router_fallback=average", "method.fallback_margin=1e-9")
    metrics = evaluate(client, env)
    assert sum(v for k, v in metrics.items() if k.endswith(".fallback")) == len(env.data.test)
    # The same per-row weights, scored directly: 1/K on every cluster adapter.
    weight = torch.full((len(env.data.test),), 1.0 / N_CLUSTERS)
    states = {ROUTE_SLOT.format(k): s for k, s in adapters(env).items()}
    direct = env.task_metrics(env.score_mixed(env.data.test, states, {slot: weight for slot in states}))
    for key, value in direct.items():
        assert metrics[f"{FALLBACK_VIEW}/{key}"] == pytest.approx(value)


def test_router_fallback_can_be_the_headline(make_env):
    env, client = registered(make_env, "method.router_fallback=average", "method.fallback_margin=1e-9")
    content = evaluation(env)
    content[CONFIG]["fedrouter.router"] = "fallback"
    metrics = client.handle("evaluate", "default", content)["metrics"]
    assert metrics["task.copy.loss"] == metrics[f"{FALLBACK_VIEW}/task.copy.loss"]
    assert metrics["task.copy.loss"] != metrics["router-global/task.copy.loss"]


def test_diagnosis_reports_every_adapter_the_average_the_base_and_the_oracle_per_task(make_env):
    env, client = registered(make_env, "method.diagnose_routing=all", "method.router_fallback=none")
    metrics = evaluate(client, env)
    for task in env.data.tasks:
        keys = {k for k in metrics if k.startswith(f"diag.{task}.")}
        expected = {"n", "average", "base", "oracle", "routed", *(f"cluster.{k}" for k in range(N_CLUSTERS))}
        assert keys == {f"diag.{task}.{what}" for what in expected}
        assert metrics[f"diag.{task}.n"] == metrics[f"task.{task}.n"]
        assert metrics[f"diag.{task}.routed"] == pytest.approx(metrics[f"router-global/task.{task}.score"])
        for k in range(N_CLUSTERS):
            assert metrics[f"diag.{task}.oracle"] >= metrics[f"diag.{task}.cluster.{k}"]
    # No fallback asked for: no fallback view, no counts.
    assert not any(k.startswith(("fallback", f"{FALLBACK_VIEW}/")) for k in metrics)


def test_soft_fallback_and_diagnosis_annotate_saved_predictions(make_env):
    env, client = registered(
        make_env, "method.router_fallback=soft", "method.fallback_margin=1e-9", "method.diagnose_routing=all"
    )
    env.asked_predictions = True
    reply = client.handle("evaluate", "default", evaluation(env))
    metrics = reply["metrics"]
    assert sum(v for k, v in metrics.items() if k.endswith(".fallback")) == len(env.data.test)
    assert metrics[f"{FALLBACK_VIEW}/task.copy.n"] == metrics["task.copy.n"]
    fallback = reply.config_records[f"predictions.{FALLBACK_VIEW}"]
    assert fallback["x.fell_back"] == [True] * len(env.data.test)
    assert all(isinstance(d, float) and d >= 0 for d in fallback["x.nearest_distance"])
    routed = reply.config_records["predictions.router-global"]
    assert all(0 <= k < N_CLUSTERS for k in routed["x.diag.best_cluster"])
    assert all(o >= s for o, s in zip(routed["x.diag.oracle"], routed["score"], strict=True))
