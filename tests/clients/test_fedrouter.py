from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.fedrouter.client import CLUSTERS, FedRouterClient, LocalClusters
from fedrouter_app.federation.records import CENTROIDS, CONFIG, adapter_record, matrix_record, read_adapter
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.strategies.fedrouter.config import global_adapter_name, local_adapter_name

DUAL = ("method=fedrouter", "scenario=dual", "scenario.train_examples_per_client=48")


def test_registration_separates_a_clients_two_tasks(make_env):
    env = make_env(*DUAL)
    reply = FedRouterClient(env).handle("query", "register", RecordDict())
    metrics = reply["metrics"]
    assert metrics["num-clusters"] == 2 and metrics["local-ari"] >= 0.9 and metrics["local-purity"] == 1.0
    assert metrics["cluster.0.size"] + metrics["cluster.1.size"] == len(env.data.train)
    centroids = reply[CENTROIDS][CENTROIDS].numpy()
    assert centroids.shape == (2, env.model().hidden_size) and centroids.dtype == np.float32
    # Computed once: the state holds the clustering, a second registration reuses it.
    stored = LocalClusters.from_record(env.state[CLUSTERS])
    again = FedRouterClient(env).handle("query", "register", RecordDict())
    np.testing.assert_array_equal(again[CENTROIDS][CENTROIDS].numpy(), stored.centroids)


def test_oracle_clusters_are_the_true_tasks(make_env):
    env = make_env(*DUAL, "method.clustering=oracle")
    FedRouterClient(env).handle("query", "register", RecordDict())
    labels = LocalClusters.from_record(env.state[CLUSTERS]).labels
    assert [env.data.tasks[j] for j in labels] == [ex.task for ex in env.data.train]


def test_too_many_local_clusters_is_a_clear_error(make_env):
    # Refused with the config when the scenario says so ...
    with pytest.raises(ConfigError, match=r"n_local=64 exceeds the 8 training examples"):
        make_env(*DUAL, "method.n_local=64", "scenario.train_examples_per_client=8")
    # ... and by the client itself when its data holds fewer (e.g. a data source smaller than the scenario says).
    env = make_env(*DUAL, "scenario.train_examples_per_client=8")
    env.cfg = replace(env.cfg, method=replace(env.cfg.method, n_local=64))
    with pytest.raises(ValueError, match=r"fewer than method\.n_local=64"):
        FedRouterClient(env).handle("query", "register", RecordDict())


def instruction(env, config: dict, clusters: dict[int, dict]) -> RecordDict:
    content = RecordDict({global_adapter_name(k): adapter_record(state) for k, state in clusters.items()})
    content[CONFIG] = ConfigRecord({"server-round": 1, "num-rounds": 2, "lr": 3e-3, **config})
    return content


def test_trains_only_the_requested_clusters_on_their_own_samples(make_env):
    env = make_env(*DUAL)
    FedRouterClient(env).handle("query", "register", RecordDict())
    init = env.initial_adapter()
    reply = FedRouterClient(env).handle(
        "train", "default", instruction(env, {"fedrouter.map": [3, 5], "fedrouter.train": [1]}, {5: init})
    )
    assert list(reply.array_records) == [local_adapter_name(1)]
    trained = read_adapter(reply[local_adapter_name(1)], env.model().template)
    # The same training from the same start on cluster 1's samples, stream 1, gives the same adapter.
    labels = LocalClusters.from_record(env.state[CLUSTERS]).labels
    from fedrouter_app.client.client_env import RoundInfo

    expected, _ = env.train(
        init,
        RoundInfo(1, 2, 3e-3),
        examples=[e for e, label in zip(env.data.train, labels, strict=True) if label == 1],
        stream=1,
    )
    for key in trained:
        np.testing.assert_array_equal(trained[key], expected[key])


def test_evaluation_routes_and_reports_both_modes(make_env):
    env = make_env(*DUAL)
    client = FedRouterClient(env)
    client.handle("query", "register", RecordDict())
    own = LocalClusters.from_record(env.state[CLUSTERS]).centroids
    far = np.full((1, own.shape[1]), 1e3, np.float32)
    centroids = np.concatenate([own, far])  # clusters 0, 1 = the client's own, 2 = far away
    init = env.initial_adapter()
    content = instruction(env, {"fedrouter.map": [0, 1], "fedrouter.router": "global"}, {0: init, 1: init, 2: init})
    content[CENTROIDS] = matrix_record(CENTROIDS, centroids)
    metrics = client.handle("evaluate", "default", content)["metrics"]
    n = len(env.data.test)
    for mode in ("global", "local"):
        routed = {k: v for k, v in metrics.items() if k.startswith(f"route.{mode}.")}
        assert sum(routed.values()) == n
        assert not any(k.endswith(".2") for k in routed)
    for task in env.data.tasks:
        assert metrics[f"router-global/task.{task}.n"] == metrics[f"task.{task}.n"]
        assert metrics[f"router-local/task.{task}.score"] == metrics[f"task.{task}.score"]


@pytest.mark.parametrize("router", ["global", "local"])
def test_the_local_router_view_can_be_left_out_unless_it_is_the_headline(make_env, router):
    env = make_env(*DUAL, "method.local_router_view=false", "method.router_fallback=none")
    client = FedRouterClient(env)
    client.handle("query", "register", RecordDict())
    centroids = LocalClusters.from_record(env.state[CLUSTERS]).centroids
    init = env.initial_adapter()
    content = instruction(env, {"fedrouter.map": [0, 1], "fedrouter.router": router}, {0: init, 1: init})
    content[CENTROIDS] = matrix_record(CENTROIDS, centroids)
    metrics = client.handle("evaluate", "default", content)["metrics"]
    scored_local = any(k.startswith(("router-local/", "route.local.")) for k in metrics)
    assert scored_local == (router == "local") and any(k.startswith("route.global.") for k in metrics)
