import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.local import OWN_ADAPTER, LocalClient
from fedrouter_app.federation.records import read_local_adapter


def instruction(server_round):
    return RecordDict({"config": ConfigRecord({"server-round": server_round, "num-rounds": 3, "lr": 3e-3})})


def test_keeps_its_adapter_in_state_across_rounds(make_env):
    env = make_env("method=local")
    reply = LocalClient(env).handle("train", "default", instruction(1))
    assert len(reply.array_records) == 0  # nothing leaves the client
    after_one = read_local_adapter(env.state[OWN_ADAPTER], env.model().template)
    # A fresh client object with the same state continues from where it stopped.
    LocalClient(make_env("method=local", state=env.state)).handle("train", "default", instruction(2))
    after_two = read_local_adapter(env.state[OWN_ADAPTER], env.model().template)
    fresh = make_env("method=local")
    LocalClient(fresh).handle("train", "default", instruction(2))
    from_scratch = read_local_adapter(fresh.state[OWN_ADAPTER], env.model().template)
    assert any(not np.array_equal(after_two[k], from_scratch[k]) for k in after_one)
    assert any(not np.array_equal(after_two[k], after_one[k]) for k in after_one)


def test_evaluates_its_own_adapter(make_env):
    env = make_env("method=local")
    before = LocalClient(env).handle("evaluate", "default", instruction(0))["metrics"]
    LocalClient(env).handle("train", "default", instruction(1))
    after = LocalClient(env).handle("evaluate", "default", instruction(1))["metrics"]
    task = env.data.tasks[0]
    assert after[f"task.{task}.loss"] < before[f"task.{task}.loss"]
