import math

import numpy as np

from clients.tap import copy_paths, tasks_to_replace
from strategies.tap import SHARED, task_key


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

    from clients.tap import PERSONAL_LOSSES, TAPClient

    env = make_env("method=tap")
    content = RecordDict({"config": ConfigRecord({"server-round": 1, "num-rounds": 3, "lr": 3e-3})})
    reply = TAPClient(env).handle("train", "default", content)
    assert reply["metrics"]["replaced"] == len(env.data.tasks)
    stored = TAPClient(env).personal()
    again = TAPClient(make_env("method=tap", state=env.state)).personal()
    assert stored is not None and all(np.array_equal(stored[k][p], again[k][p]) for k in stored for p in stored[k])
    assert set(env.state[PERSONAL_LOSSES]) == set(env.data.tasks)
