from collections import defaultdict

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.client.client_env import RoundInfo
from fedrouter_app.client.task_routing import CENTROIDS
from fedrouter_app.clients.fltac import FLTACClient
from fedrouter_app.federation.records import adapter_record, matrix_record, read_matrix
from fedrouter_app.ml.clustering import nearest
from fedrouter_app.ml.embedding import embed_texts
from fedrouter_app.ml.evaluation import text_loss
from fedrouter_app.strategies.fltac import INITIAL, ROUTER_CLUSTERS, cluster_name

FLTAC = ("method=fltac", "scenario=dual", "data.tasks=[copy,reverse,capital,sentiment]", "eval.scope=global")


def instruction(env, clusters, rule="perplexity"):
    content = RecordDict({cluster_name(k): adapter_record(state) for k, state in enumerate(clusters)})
    content[INITIAL] = adapter_record(env.initial_adapter())
    content["config"] = ConfigRecord(
        {
            "server-round": 2,
            "num-rounds": 2,
            "lr": 3e-3,
            "fltac.slots": [0, 1],
            "fltac.unseen-rule": rule,
            "fltac.oracle-tasks": ["copy"],
            "fltac.oracle-clusters": [2],
        }
    )
    return content


def trained_clusters(env):
    initial = env.initial_adapter()
    by_task = defaultdict(list)
    for ex in env.data.train:
        by_task[ex.task].append(ex)
    trained = [env.train(initial, RoundInfo(0, 2, 3e-3), examples=exs, steps=6)[0] for exs in by_task.values()]
    return [initial, *trained]


def test_perplexity_rule_picks_the_cluster_with_the_lowest_prompt_loss(make_env):
    env = make_env(*FLTAC)
    clusters = trained_clusters(env)
    content = instruction(env, clusters)
    unseen = defaultdict(list)
    for ex in env.data.test:
        unseen[ex.task].append(ex)
    chosen = FLTACClient(env)._unseen_clusters(dict(unseen), content)
    assert chosen.keys() == unseen.keys()
    for task, examples in unseen.items():
        prompts = [env.fmt.prompt(ex) for ex in examples]
        losses = [text_loss(env.load({"default": c}), prompts, batch_size=4) for c in clusters]
        assert losses[chosen[task]] == min(losses)
    # The reference path (one pass per cluster adapter) chooses the same clusters.
    reference = make_env(*FLTAC, "speed.eval_batching=false")
    assert FLTACClient(reference)._unseen_clusters(dict(unseen), content) == chosen


def test_oracle_rule_uses_the_holder_and_falls_back_to_perplexity(make_env):
    env = make_env(*FLTAC)
    clusters = trained_clusters(env)
    unseen = defaultdict(list)
    for ex in env.data.test:
        unseen[ex.task].append(ex)
    client = FLTACClient(env)
    chosen = client._unseen_clusters(dict(unseen), instruction(env, clusters, rule="oracle"))
    perplexity = client._unseen_clusters(dict(unseen), instruction(env, clusters))
    assert chosen["copy"] == 2
    assert {t: k for t, k in chosen.items() if t != "copy"} == {t: k for t, k in perplexity.items() if t != "copy"}
    assert set(client._unseen_clusters(dict(unseen), instruction(env, clusters, rule="average")).values()) == {-1}


# The router rule: slot centroids with training replies, each unseen test sample routed to its nearest cluster.

ROUTER = ("method=fltac_router", *FLTAC[1:])


def test_only_the_router_rule_sends_slot_centroids(make_env):
    replies = {}
    for name, overrides in (("router", ROUTER), ("perplexity", FLTAC)):
        env = make_env(*overrides, "train.local_steps=1")
        content = instruction(env, [env.initial_adapter()])
        content["config"]["fltac.slots"] = [-1]
        replies[name] = FLTACClient(env).train(content, RoundInfo(1, 2, 3e-3))
    assert CENTROIDS not in replies["perplexity"].array_records
    n, dim = len(env.data.tasks), env.model().hidden_size
    centroids = read_matrix(replies["router"][CENTROIDS], CENTROIDS, max_rows=n, cols=dim)
    assert centroids.shape == (n, dim) and replies["router"]["metrics"]["num-slots"] == n
    embeddings = embed_texts(env.model(), [ex.instruction for ex in env.data.train], batch_size=4)
    for j, task in enumerate(env.data.tasks):  # row j: the mean embedding of slot j's (task j's) training samples
        rows = [i for i, ex in enumerate(env.data.train) if ex.task == task]
        np.testing.assert_allclose(centroids[j], embeddings[rows].mean(axis=0), rtol=1e-4, atol=1e-5)


def router_instruction(env, clusters, ids, centroids):
    content = instruction(env, clusters, rule="router")
    content["config"][ROUTER_CLUSTERS] = list(ids)
    content[CENTROIDS] = matrix_record(CENTROIDS, np.asarray(centroids, np.float32))
    return content


def perturbed(env, seed):
    """The initial adapter with noise on every tensor: distinct adapters without training."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0.0, 0.2, v.shape)).astype(np.float32) for k, v in env.initial_adapter().items()}


@pytest.mark.slow
def test_router_scores_each_unseen_sample_with_the_cluster_of_its_nearest_centroid(make_env):
    env = make_env(*ROUTER)
    clusters = [perturbed(env, seed) for seed in range(3)]
    test = env.data.test
    unseen = [i for i, ex in enumerate(test) if ex.task not in env.data.tasks]
    embeddings = embed_texts(env.model(), [test[i].instruction for i in unseen], batch_size=3)
    # Centroids at two unseen samples of different tasks (and a far one): both clusters 2 and 0 get samples.
    first = {test[i].task: n for n, i in reversed(list(enumerate(unseen)))}
    a, b = sorted(first.values())
    ids = [2, 0, 1]
    centroids = [embeddings[a], embeddings[b], np.full(embeddings.shape[1], 1e3)]
    expected = [ids[k] for k in nearest(embeddings, np.stack(centroids))]
    assert {2, 0} <= set(expected) and 1 not in expected
    reply = FLTACClient(env).evaluate(router_instruction(env, clusters, ids, centroids), RoundInfo(2, 2, 3e-3))
    metrics = reply["metrics"]
    counts = defaultdict(int)
    for i, k in zip(unseen, expected, strict=True):
        counts[f"route.global.other.{test[i].task}.{k}"] += 1
    assert {k: v for k, v in metrics.items() if k.startswith("route.")} == counts
    # Own task j keeps its slot (fltac.slots = [0, 1]: cluster j); each routed sample gets its cluster's adapter.
    routes = {i: j for j, task in enumerate(env.data.tasks) for i, ex in enumerate(test) if ex.task == task}
    routes.update(dict(zip(unseen, expected, strict=True)))
    scores = []
    for k in sorted(set(routes.values())):
        scores += env.score([ex for i, ex in enumerate(test) if routes[i] == k], clusters[k])
    for key, value in env.task_metrics(scores).items():
        assert metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key


def test_router_rule_before_any_centroid_uses_the_mean_of_the_slots(make_env):
    env = make_env(*ROUTER)
    unseen = defaultdict(list)
    for ex in env.data.test:
        if ex.task not in env.data.tasks:
            unseen[ex.task].append(ex)
    content = instruction(env, [env.initial_adapter()] * 3, rule="router")
    assert set(FLTACClient(env)._unseen_clusters(dict(unseen), content).values()) == {-1}


def test_evaluation_with_every_speed_up_equals_the_reference_path(make_env):
    # Own tasks under their slots and unseen tasks under their chosen clusters, all rows in one set of
    # batches (with the shared prompt pass) against one pass per adapter without any speed-up.
    fast = make_env(*FLTAC)
    reference = make_env(
        *FLTAC,
        "speed.eval_batching=false",
        "speed.shared_prefill=false",
        "speed.scored_logits_only=false",
        "speed.prefix_cache=false",
    )
    content = instruction(fast, trained_clusters(fast))
    metrics = [FLTACClient(env).handle("evaluate", "default", content)["metrics"] for env in (fast, reference)]
    tasks = [{k: v for k, v in m.items() if k.startswith(("task.", "unseen."))} for m in metrics]
    assert tasks[0].keys() == tasks[1].keys() and any(k.startswith("unseen.") for k in tasks[0])
    for key, value in tasks[0].items():
        assert value == pytest.approx(tasks[1][key], rel=1e-4, abs=1e-4), key
