import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.fedavg_ft import BEFORE_VIEW, FedAvgFTClient
from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.federation.records import ADAPTER, adapter_record


def instruction(state, server_round, num_rounds=2, lr=3e-4):
    return RecordDict(
        {
            ADAPTER: adapter_record(state),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": num_rounds, "lr": lr}),
        }
    )


def evaluate(client, env, server_round):
    return client(env).handle("evaluate", "default", instruction(env.initial_adapter(), server_round))["metrics"]


def test_rounds_before_the_last_evaluate_the_global_adapter(make_env):
    env = make_env("method=fedavg_ft")
    assert dict(evaluate(FedAvgFTClient, env, 1)) == dict(evaluate(FedITClient, env, 1))


@pytest.mark.slow
def test_the_last_round_evaluates_the_global_adapter_fine_tuned_locally(make_env):
    env = make_env("method=fedavg_ft")
    tuned = dict(evaluate(FedAvgFTClient, env, 2))
    global_ = dict(evaluate(FedITClient, env, 2))
    assert tuned["finetune-steps"] == env.cfg.method.finetune_steps
    for task in env.data.tasks:
        # The view keeps the global adapter's scores: FedIT's number from the same run.
        assert tuned[f"{BEFORE_VIEW}/task.{task}.loss"] == global_[f"task.{task}.loss"]
        assert tuned[f"task.{task}.loss"] < global_[f"task.{task}.loss"]
    assert dict(evaluate(FedAvgFTClient, env, 2)) == tuned  # seeded: the same steps every time
    assert len(env.state.array_records) == 0  # nothing is kept: the fine-tuned adapter is evaluated and dropped


def test_zero_fine_tuning_steps_is_fedit(make_env):
    env = make_env("method=fedavg_ft", "method.finetune_steps=0")
    assert dict(evaluate(FedAvgFTClient, env, 2)) == dict(evaluate(FedITClient, env, 2))
