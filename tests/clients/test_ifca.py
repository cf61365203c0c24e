import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.client.client_env import RoundInfo
from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.clients.ifca import IFCAClient, lowest
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter
from fedrouter_app.strategies.ifca import CHOSEN, cluster_adapter_name, loss_metric

IFCA = ("method=ifca", "method.n_clusters=3")


def instruction(clusters, server_round=1, lr=3e-3):
    content = RecordDict({cluster_adapter_name(k): adapter_record(state) for k, state in enumerate(clusters)})
    content["config"] = ConfigRecord({"server-round": server_round, "num-rounds": 2, "lr": lr})
    return content


def test_lowest_takes_the_unique_minimum_and_breaks_exact_ties_at_random():
    rng = np.random.default_rng(0)
    assert lowest([3.0, 1.0, 2.0], rng) == 1
    picks = {lowest([1.0, 1.0, 1.0, 2.0], np.random.default_rng(seed)) for seed in range(32)}
    assert picks == {0, 1, 2}
    assert lowest([1.0, 1.0], np.random.default_rng(5)) == lowest([1.0, 1.0], np.random.default_rng(5))


def clusters_with_one_trained(env):
    initial = env.initial_adapter()
    trained, _ = env.train(initial, RoundInfo(0, 2, 3e-3), steps=8)
    return [initial, trained, initial]


@pytest.mark.slow
def test_trains_the_cluster_with_the_lowest_training_loss(make_env):
    env = make_env(*IFCA)
    clusters = clusters_with_one_trained(env)
    reply = IFCAClient(env).handle("train", "default", instruction(clusters))
    metrics = reply["metrics"]
    assert metrics[CHOSEN] == 1
    assert metrics[loss_metric(1)] < metrics[loss_metric(0)] == metrics[loss_metric(2)]
    sent = read_adapter(reply[ADAPTER], env.model().template)
    expected, _ = env.train(clusters[1], RoundInfo(1, 2, 3e-3))
    assert all(np.array_equal(sent[k], expected[k]) for k in sent)


def test_evaluates_with_the_cluster_it_chooses(make_env):
    env = make_env(*IFCA)
    clusters = clusters_with_one_trained(env)
    metrics = IFCAClient(env).handle("evaluate", "default", instruction(clusters))["metrics"]
    fedit = FedITClient(env).handle("evaluate", "default", RecordDict({ADAPTER: adapter_record(clusters[1])}))
    assert metrics[CHOSEN] == 1
    tasks = {k: v for k, v in metrics.items() if k.startswith("task.")}
    assert tasks == {k: v for k, v in fedit["metrics"].items() if k.startswith("task.")}
    assert not env.state.array_records  # nothing to remember between rounds


def test_losses_use_a_seeded_sample_of_loss_examples(make_env):
    env = make_env(*IFCA, "method.loss_examples=8")
    client = IFCAClient(env)
    first = client.loss_examples(RoundInfo(1, 2, 3e-3))
    assert len(first) == 8 and set(first) <= set(env.data.train)
    assert client.loss_examples(RoundInfo(1, 2, 3e-3)) == first
    assert client.loss_examples(RoundInfo(2, 2, 3e-3)) != first
    assert IFCAClient(make_env(*IFCA, "method.loss_examples=0")).loss_examples(RoundInfo(1, 2, 0)) == env.data.train
