import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter


def instruction(state, server_round=1, lr=3e-3):
    return RecordDict(
        {
            ADAPTER: adapter_record(state),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": 2, "lr": lr}),
        }
    )


def test_trains_the_received_adapter(make_env):
    env = make_env()
    start = env.initial_adapter()
    reply = FedITClient(env).handle("train", "default", instruction(start))
    trained = read_adapter(reply[ADAPTER], env.model().template)
    assert any(not np.array_equal(trained[k], start[k]) for k in start)
    metrics = reply["metrics"]
    assert metrics["num-examples"] == len(env.data.train)
    assert metrics["train-steps"] == env.cfg.train.local_steps and metrics["train-loss"] > 0


def test_evaluates_the_received_adapter_on_own_tasks(make_env):
    env = make_env()
    reply = FedITClient(env).handle("evaluate", "default", instruction(env.initial_adapter()))
    metrics = reply["metrics"]
    for task in env.data.tasks:
        assert metrics[f"task.{task}.n"] == env.cfg.scenario.test_examples_per_task
        assert metrics[f"task.{task}.own"] == 1.0
        assert metrics[f"task.{task}.loss"] > 0
    assert len(reply.array_records) == 0
