"""FedRouter's claims on a small interference setting, read from the results JSON.

Four clients, each holding two tasks (dual); evaluated on every task
(eval.scope=global), so each client meets two tasks it never trained on.
"""

import pytest

from fedrouter_app.runners.inprocess import run_inprocess

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

SMALL = [
    "num_clients=4",
    "num_rounds=6",
    "scenario=dual",
    "data.tasks=[copy,reverse,capital,sentiment]",
    "scenario.train_examples_per_client=64",
    "scenario.test_examples_per_task=8",
    "train.local_steps=15",
    "train.batch_size=8",
    "eval.scope=global",
    "eval.at_start=false",
]


@pytest.fixture(scope="module")
def runs():
    return {m: run_inprocess([*SMALL, f"method={m}"], 4)[0] for m in ("fedit", "local", "fedrouter")}


def last_eval(results):
    return results["rounds"][-1]["evaluate"]


def test_local_clusters_separate_each_clients_two_tasks(runs):
    clustering = runs["fedrouter"]["rounds"][0]["strategy"]["setup"]["clustering"]
    assert all(scores["ari"] >= 0.9 for scores in clustering["local"].values()), clustering["local"]
    assert clustering["global"]["ari"] >= 0.9


def test_router_sends_test_samples_to_the_right_cluster(runs):
    routing = runs["fedrouter"]["rounds"][-1]["strategy"]["evaluate"]["routing"]
    assert routing["global"]["accuracy"] >= 0.9
    assert routing["global"]["accuracy_own"] >= 0.9 and routing["local"]["accuracy_own"] >= 0.9


def test_beats_fedit_on_the_clients_own_tasks(runs):
    assert last_eval(runs["fedrouter"])["own_mean"]["score"] > last_eval(runs["fedit"])["own_mean"]["score"] + 0.1


def test_global_router_generalises_to_unseen_tasks(runs):
    unseen = {m: last_eval(r)["other_mean"]["score"] for m, r in runs.items()}
    assert unseen["fedrouter"] > unseen["fedit"] + 0.1, unseen
    assert unseen["fedrouter"] > unseen["local"] + 0.1, unseen
    views = last_eval(runs["fedrouter"])["views"]
    # Restricted to its own clusters, a client cannot serve tasks it never trained on.
    assert views["router-global"]["other_mean"]["score"] > views["router-local"]["other_mean"]["score"]
