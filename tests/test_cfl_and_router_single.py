"""CFL and FedRouter with one local cluster per client (``fedrouter_n1``) run whole (small) federations."""

import pytest

from fedrouter_app.runners.inprocess import run_inprocess

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

BASE = [
    "num_clients=4",
    "num_rounds=3",
    "train.local_steps=4",
    "train.batch_size=8",
    "scenario=dual",
    "scenario.train_examples_per_client=32",
    "scenario.test_examples_per_task=4",
    "data.tasks=[copy,reverse,capital,sentiment]",
    "eval.scope=global",
]


def test_cfl_clusters_once_and_late_clients_join_a_cluster():
    results, run_dir, _ = run_inprocess([*BASE, "method=cfl", "method.n_clusters=2", "fraction_train=0.5"], 4)
    assert results["run"]["status"] == "completed"
    rounds = {r["round"]: r for r in results["rounds"]}
    assert "train" not in rounds[1]["strategy"]  # FedAvg before the clustering round
    clustering = rounds[2]["strategy"]["train"]["clustered"]
    clustered = set(clustering["assignment"])
    assert clustered == {str(c) for c in rounds[2]["train"]["clients"]}
    assert clustering["n_clusters"] == min(2, len(clustered)) == len(set(clustering["assignment"].values()))
    # Clients that missed the clustering round are assigned when they first reply; the others keep their cluster.
    third = rounds[3]["strategy"]["train"]
    assert third.get("joined")  # seed 0 samples clients 2 and 3 in round 2, then 0 and 1
    assert set(third.get("joined", {})) == set(third["assignment"]) - clustered
    assert all(third["assignment"][c] == k for c, k in clustering["assignment"].items() if c in third["assignment"])
    evaluated = rounds[3]["strategy"]["evaluate"]["assignment"]
    assert all(evaluated[c] == k for c, k in {**clustering["assignment"], **third["assignment"]}.items())
    names = sorted(p.name for p in (run_dir / "adapters").iterdir())
    assert names == [*(f"cluster-{k}" for k in range(clustering["n_clusters"])), "global"]
    assert results["rounds"][-1]["evaluate"]["own_mean"]["score"] >= 0


def test_fedrouter_n1_clusters_clients_by_one_data_centroid_each():
    results, run_dir, _ = run_inprocess([*BASE, "method=fedrouter_n1"], 4)
    assert results["run"]["status"] == "completed"
    setup = results["rounds"][0]["strategy"]["setup"]["clustering"]
    assert setup["n_global"] == 4
    assert sorted(setup["assignment"]) == ["0", "1", "2", "3"]
    assert all(len(clusters) == 1 for clusters in setup["assignment"].values())
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == [f"cluster-{k}" for k in range(4)]
