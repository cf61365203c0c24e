import math
from collections import Counter

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.client.client_env import RoundInfo
from fedrouter_app.client.task_routing import CENTROIDS
from fedrouter_app.clients.tap import TAPClient, copy_paths, tasks_to_replace
from fedrouter_app.federation.records import adapter_record, matrix_record, read_matrix
from fedrouter_app.ml.clustering import nearest
from fedrouter_app.ml.embedding import embed_texts
from fedrouter_app.strategies.tap import ROUTER_KEYS, SHARED, centroid_size_name, payload_name, task_key


def test_first_participation_replaces_every_task():
    assert tasks_to_replace({"a": 5.0, "b": 9.0}, {}, margin=0.01) == {"a", "b"}


def test_margin_boundary():
    personal = {"a": 1.0, "b": 1.0, "c": 1.0}
    regular = {"a": 0.98, "b": 0.99, "c": 0.995}
    # Strictly better by more than the margin replaces; exactly the margin does not.
    assert tasks_to_replace(regular, personal, margin=0.01) == {"a"}
    assert tasks_to_replace({"a": 1.0}, {"a": math.inf}, margin=0.0) == {"a"}


def test_only_the_replaced_tasks_path_is_copied():
    def marked(v):
        return {"w": np.full((1,), v, np.float32)}

    regular = {SHARED: marked(1), task_key("a"): marked(2), task_key("b"): marked(3)}
    personal = {SHARED: marked(-1), task_key("a"): marked(-2), task_key("b"): marked(-3)}
    out = copy_paths(regular, personal, {"a"})
    assert out[SHARED]["w"][0] == 1 and out[task_key("a")]["w"][0] == 2 and out[task_key("b")]["w"][0] == -3
    assert copy_paths(regular, personal, set()) == personal


def test_personal_model_survives_in_state(make_env):
    from flwr.app import ConfigRecord, RecordDict

    from fedrouter_app.clients.tap import PERSONAL_LOSSES, TAPClient

    env = make_env("method=tap")
    content = RecordDict({"config": ConfigRecord({"server-round": 1, "num-rounds": 3, "lr": 3e-3})})
    reply = TAPClient(env).handle("train", "default", content)
    assert reply["metrics"]["replaced"] == len(env.data.tasks)
    stored = TAPClient(env).personal()
    again = TAPClient(make_env("method=tap", state=env.state)).personal()
    assert stored is not None and all(np.array_equal(stored[k][p], again[k][p]) for k in stored for p in stored[k])
    assert set(env.state[PERSONAL_LOSSES]) == set(env.data.tasks)


# The router rule: task centroids with training replies, each unseen test sample through its nearest task LoRA.

ROUTER = ("method=tap_router", "scenario=dual", "data.tasks=[copy,reverse,capital,sentiment]", "eval.scope=global")


def perturbed(env, seed):
    """The initial adapter with noise on every tensor: distinct LoRAs without training."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0.0, 0.2, v.shape)).astype(np.float32) for k, v in env.initial_adapter().items()}


def test_only_the_router_rule_sends_task_centroids(make_env):
    replies = {}
    for name, overrides in (("router", ROUTER), ("shared", ("method=tap", *ROUTER[1:]))):
        env = make_env(*overrides, "train.local_steps=1")
        content = RecordDict({"config": ConfigRecord({"server-round": 1, "num-rounds": 3, "lr": 3e-3})})
        replies[name] = TAPClient(env).handle("train", "default", content)
    assert CENTROIDS not in replies["shared"].array_records
    assert not any(k.startswith(CENTROIDS) for k in replies["shared"]["metrics"])
    record, metrics = replies["router"][CENTROIDS], replies["router"]["metrics"]
    assert sorted(record) == sorted(task_key(t) for t in env.data.tasks)
    embeddings = embed_texts(env.model(), [ex.instruction for ex in env.data.train], batch_size=4)
    for task in env.data.tasks:
        rows = [i for i, ex in enumerate(env.data.train) if ex.task == task]
        centroid = read_matrix(record, task_key(task), max_rows=1, cols=env.model().hidden_size)[0]
        np.testing.assert_allclose(centroid, embeddings[rows].mean(axis=0), rtol=1e-4, atol=1e-5)
        assert metrics[centroid_size_name(task_key(task))] == len(rows)


def router_setup(env):
    """An evaluation instruction routing to one own and one foreign task LoRA, and the routes it must give."""
    own, test = env.data.tasks, env.data.test
    unseen = [i for i, ex in enumerate(test) if ex.task not in own]
    foreign_task = test[unseen[0]].task
    other = next(i for i in unseen if test[i].task != foreign_task)
    embeddings = embed_texts(env.model(), [test[i].instruction for i in unseen], batch_size=3)
    keys = [task_key(own[0]), task_key(foreign_task)]
    centroids = np.stack([embeddings[unseen.index(other)], embeddings[0]])
    lora = {key: perturbed(env, seed) for seed, key in enumerate([SHARED, *(task_key(t) for t in own), keys[1]])}
    content = RecordDict({payload_name(key): adapter_record(state) for key, state in lora.items()})
    content["config"] = ConfigRecord({"server-round": 1, "num-rounds": 3, "lr": 3e-3, ROUTER_KEYS: keys})
    content[CENTROIDS] = matrix_record(CENTROIDS, centroids)
    expected = {i: keys[k] for i, k in zip(unseen, nearest(embeddings, centroids), strict=True)}
    assert set(expected.values()) == set(keys)  # rows go to an own and to a foreign task LoRA
    return content, lora, expected


@pytest.mark.slow
def test_router_runs_each_unseen_sample_through_the_shared_and_its_nearest_task_lora(make_env):
    env = make_env(*ROUTER)
    content, lora, expected = router_setup(env)
    client = TAPClient(env)
    routes, foreign, counts = client.routes(content)
    foreign_key = list(content["config"][ROUTER_KEYS])[1]
    assert routes == expected and list(foreign) == [foreign_key]
    assert all(np.array_equal(foreign[foreign_key][p], lora[foreign_key][p]) for p in lora[foreign_key])
    test = env.data.test
    keys = list(content["config"][ROUTER_KEYS])
    want = Counter(f"route.global.other.{test[i].task}.{keys.index(k)}" for i, k in expected.items())
    assert counts == want
    metrics = client.evaluate(content, RoundInfo(1, 3, 3e-3))["metrics"]
    assert {k: v for k, v in metrics.items() if k.startswith("route.")} == want
    # Every row: the shared LoRA plus its own task's LoRA, its routed one, or none.
    path = {i: task_key(ex.task) for i, ex in enumerate(test) if ex.task in env.data.tasks} | expected
    scores, both = [], {"default": 1.0, "tap_check": 1.0}
    for key in sorted(set(path.values())):
        rows = [ex for i, ex in enumerate(test) if path[i] == key]
        scores += env.score(rows, lora[SHARED], others={"tap_check": lora[key]}, mixing=lambda chunk: both)
    for key, value in env.task_metrics(scores).items():
        assert metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key


@pytest.mark.slow
def test_routed_views_match_the_one_pass_per_view_reference(make_env):
    env = make_env(*ROUTER)
    content, lora, expected = router_setup(env)
    routes, foreign, _ = TAPClient(env).routes(content)
    assert routes == expected
    own_keys = [SHARED, *(task_key(t) for t in env.data.tasks)]
    models = {
        "regular": {key: lora[key] for key in own_keys},
        "personal": {key: perturbed(env, 10 + i) for i, key in enumerate(own_keys)},
    }
    batched = TAPClient(env).score_views(models, routes, foreign)
    reference = TAPClient(make_env(*ROUTER, "speed.eval_batching=false")).score_views(models, routes, foreign)
    plain = TAPClient(env).score_views(models)
    for view in models:
        for a, b in zip(batched[view], reference[view], strict=True):
            assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-3, abs=1e-3)
        # Routing changes exactly the routed rows (the others run through the same LoRAs as without it).
        pairs = enumerate(zip(batched[view], plain[view], strict=True))
        assert {i for i, (a, b) in pairs if abs(a.loss_sum - b.loss_sum) > 1e-3} == set(routes)
