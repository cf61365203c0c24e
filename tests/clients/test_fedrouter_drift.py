"""FedRouter's drift check on the client: the rule on hand-made embeddings, then clients whose data drift."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.client.client_env import ClientEnv
from fedrouter_app.clients.fedrouter.client import (
    CLUSTERS,
    FedRouterClient,
    LocalClusters,
    has_drifted,
    instructions_digest,
    mean_nearest_distance,
)
from fedrouter_app.data.example import Example
from fedrouter_app.data.partition import build_client_data, drifting_clients
from fedrouter_app.federation.records import CENTROIDS, CONFIG
from fedrouter_app.strategies.fedrouter.config import CHECK, UNCHANGED

DRIFT = ("scenario=drift", "data.tasks=[copy,reverse,capital,sentiment]", "num_rounds=4")  # drift from round 3


def test_mean_distance_to_the_nearest_centroid():
    centroids = np.array([[0.0, 0.0], [3.0, 0.0]])
    assert mean_nearest_distance(np.array([[0.0, 0.0], [2.0, 0.0]]), centroids) == pytest.approx(0.5)
    assert mean_nearest_distance(np.array([[0.0, 4.0], [3.0, -2.0]]), centroids) == pytest.approx(3.0)


def test_the_drift_rule_compares_with_the_distance_at_clustering():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]])
    clustered = np.array([[1.0, 0.0], [-1.0, 0.0], [9.0, 0.0], [11.0, 0.0]])
    baseline = mean_nearest_distance(clustered, centroids)
    assert baseline == pytest.approx(1.0)
    assert not has_drifted(clustered, centroids, baseline, 1.25)
    assert not has_drifted(np.array([[0.0, 1.25]]), centroids, baseline, 1.25)  # exactly at the threshold
    assert has_drifted(np.array([[0.0, 1.3]]), centroids, baseline, 1.25)
    # Samples between the old clusters are far from both: a new mix of tasks.
    assert has_drifted(np.array([[5.0, 0.0], [5.0, 3.0]]), centroids, baseline, 1.25)
    assert not has_drifted(np.array([[5.0, 0.0]]), centroids, baseline, 5.0)


def test_the_digest_tells_data_apart():
    def examples(*texts):
        return [Example(task="t", instruction=t, response="r") for t in texts]

    assert np.array_equal(instructions_digest(examples("a", "b")), instructions_digest(examples("a", "b")))
    assert not np.array_equal(instructions_digest(examples("a", "b")), instructions_digest(examples("b", "a")))
    assert not np.array_equal(instructions_digest(examples("ab", "c")), instructions_digest(examples("a", "bc")))
    assert instructions_digest(examples()).shape == (16,)


@pytest.fixture
def clients(make_cfg):
    """``client(round, *overrides, client=...)``: a FedRouter client of a drifting run in ``round``, one state each."""
    states: dict[tuple, RecordDict] = {}

    def make(server_round: int, *overrides: str, client: int) -> FedRouterClient:
        cfg = make_cfg(*DRIFT, *overrides)
        state = states.setdefault((overrides, client), RecordDict())
        return FedRouterClient(ClientEnv(cfg=cfg, data=build_client_data(cfg, client, server_round), state=state))

    return make


def movers(make_cfg) -> tuple[int, int]:
    cfg = make_cfg(*DRIFT)
    moving = drifting_clients(cfg.seed, cfg.num_clients, 0.5)
    return moving[0], next(c for c in range(cfg.num_clients) if c not in moving)


def check(method: FedRouterClient) -> RecordDict:
    return method.handle("query", "register", RecordDict({CONFIG: ConfigRecord({CHECK: True, "server-round": 3})}))


def counting_embed(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = FedRouterClient.embed

    def embed(self, instructions):
        calls.append(len(instructions))
        return original(self, instructions)

    monkeypatch.setattr(FedRouterClient, "embed", embed)
    return calls


def test_a_drifting_client_clusters_again_and_sends_its_new_centroids_once(make_cfg, clients):
    moving, _ = movers(make_cfg)
    first = clients(1, "method=fedrouter_drift", client=moving)
    registered = first.handle("query", "register", RecordDict())[CENTROIDS][CENTROIDS].numpy()
    before = first.drift_reference()
    assert before["shared"][0] == 1 and before["baseline"][0] > 0
    after = clients(3, "method=fedrouter_drift", client=moving)
    reply = check(after)
    centroids = reply[CENTROIDS][CENTROIDS].numpy()
    assert centroids.shape == registered.shape and not np.allclose(centroids, registered)
    # The new clusters are those of the new tasks, each a task of its own.
    metrics = reply["metrics"]
    assert metrics["local-purity"] == 1.0
    assert {key.rsplit(".", 1)[1] for key in metrics if ".task." in key} == set(after.env.data.tasks)
    reference = after.drift_reference()
    assert np.array_equal(reference["labelled"], instructions_digest(after.env.data.train))
    assert reference["shared"][0] == 1 and reference["baseline"][0] != before["baseline"][0]
    # Asked again in a later round: nothing changed since.
    assert dict(check(clients(4, "method=fedrouter_drift", client=moving))["metrics"]) == {UNCHANGED: 1}


def test_a_client_whose_data_stay_answers_unchanged_without_embedding_them(make_cfg, clients, monkeypatch):
    _, staying = movers(make_cfg)
    clients(1, "method=fedrouter_drift", client=staying).handle("query", "register", RecordDict())
    calls = counting_embed(monkeypatch)
    reply = check(clients(3, "method=fedrouter_drift", client=staying))
    assert CENTROIDS not in reply.array_records and dict(reply["metrics"]) == {UNCHANGED: 1}
    assert calls == []


def test_below_the_threshold_new_samples_join_their_nearest_clusters(make_cfg, clients):
    moving, _ = movers(make_cfg)
    overrides = ("method=fedrouter_drift", "method.drift_threshold=100")
    clients(1, *overrides, client=moving).handle("query", "register", RecordDict())
    old = LocalClusters.from_record(clients(1, *overrides, client=moving).env.state[CLUSTERS])
    after = clients(3, *overrides, client=moving)
    reply = check(after)
    assert CENTROIDS not in reply.array_records and dict(reply["metrics"]) == {UNCHANGED: 1}
    new = LocalClusters.from_record(after.env.state[CLUSTERS])
    np.testing.assert_array_equal(new.centroids, old.centroids)
    embeddings = after.embed([ex.instruction for ex in after.env.data.train])
    distances = np.linalg.norm(embeddings[:, None] - old.centroids[None], axis=-1)
    np.testing.assert_array_equal(new.labels, distances.argmin(axis=1))


def test_without_the_check_a_drifting_client_keeps_its_clusters(make_cfg, clients):
    moving, _ = movers(make_cfg)
    first = clients(1, "method=fedrouter", client=moving)
    first.handle("query", "register", RecordDict())
    old = LocalClusters.from_record(first.env.state[CLUSTERS])
    after = clients(3, "method=fedrouter", client=moving)
    clusters = after.follow_data(check=after.env.cfg.method.drift_check)
    np.testing.assert_array_equal(clusters.centroids, old.centroids)
    assert len(clusters.labels) == len(after.env.data.train)
    assert after.drift_reference()["shared"][0] == 1  # nothing new to send


def test_test_embeddings_are_refreshed_when_the_test_set_changes(make_cfg, clients, monkeypatch):
    moving, staying = movers(make_cfg)
    calls = counting_embed(monkeypatch)
    for client in (moving, staying):
        before = clients(1, "method=fedrouter", client=client).test_embeddings()
        after = clients(3, "method=fedrouter", client=client).test_embeddings()
        assert before.shape == after.shape
        assert np.array_equal(before, after) == (client == staying)
    assert len(calls) == 3  # the staying client's test set is embedded once
