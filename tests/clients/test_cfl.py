import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.client.client_env import RoundInfo
from fedrouter_app.clients.cfl import CFLClient
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter

CFL = ("method=cfl",)


def instruction(state, server_round=1, lr=3e-3):
    return RecordDict(
        {
            ADAPTER: adapter_record(state),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": 2, "lr": lr}),
        }
    )


def test_trains_the_adapter_it_is_sent_and_returns_only_that(make_env):
    env = make_env(*CFL)
    start, _ = env.train(env.initial_adapter(), RoundInfo(0, 2, 3e-3), steps=3)
    reply = CFLClient(env).handle("train", "default", instruction(start))
    assert list(reply.array_records) == [ADAPTER]
    trained = read_adapter(reply[ADAPTER], env.model().template)
    expected, _ = env.train(start, RoundInfo(1, 2, 3e-3))
    assert all(np.array_equal(trained[k], expected[k]) for k in trained)
    assert reply["metrics"]["num-examples"] == len(env.data.train)
    assert not env.state.array_records  # the server keeps the clustering; the client keeps nothing


def test_scores_every_test_sample_with_the_adapter_it_is_sent(make_env):
    env = make_env(*CFL)
    adapter, _ = env.train(env.initial_adapter(), RoundInfo(0, 2, 3e-3), steps=3)
    metrics = CFLClient(env).handle("evaluate", "default", instruction(adapter))["metrics"]
    expected = env.task_metrics(env.score(env.data.test, adapter))
    assert {k: v for k, v in metrics.items() if k.startswith("task.")} == expected
    for task in env.data.tasks:
        assert metrics[f"task.{task}.n"] == env.cfg.scenario.test_examples_per_task
