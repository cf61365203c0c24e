import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.ditto import PERSONAL_ADAPTER, DittoClient
from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter, read_local_adapter

pytestmark = pytest.mark.slow  # each test trains the model for several steps


def instruction(state, server_round=1, lr=3e-3):
    return RecordDict(
        {
            ADAPTER: adapter_record(state),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": 3, "lr": lr}),
        }
    )


def personal(env):
    return read_local_adapter(env.state[PERSONAL_ADAPTER], env.model().template)


def distance(a, b):
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_the_global_adapter_is_trained_exactly_as_fedit(make_env):
    env = make_env("method=ditto")
    start = env.initial_adapter()
    reply = DittoClient(env).handle("train", "default", instruction(start))
    expected = FedITClient(env).handle("train", "default", instruction(start))
    template = env.model().template
    sent, fedit = read_adapter(reply[ADAPTER], template), read_adapter(expected[ADAPTER], template)
    assert all(np.array_equal(sent[k], fedit[k]) for k in template)
    assert reply["metrics"]["train-loss"] == expected["metrics"]["train-loss"]
    assert reply["metrics"]["personal-steps"] == env.cfg.method.personal_steps
    assert list(reply.array_records) == [ADAPTER]  # the personal adapter stays home
    assert distance(personal(env), sent) > 0


def test_evaluation_uses_the_personal_adapter(make_env):
    env = make_env("method=ditto")
    start = env.initial_adapter()
    before = DittoClient(env).handle("evaluate", "default", instruction(start))["metrics"]
    assert dict(before) == dict(FedITClient(env).handle("evaluate", "default", instruction(start))["metrics"])
    DittoClient(env).handle("train", "default", instruction(start))
    after = DittoClient(env).handle("evaluate", "default", instruction(start))["metrics"]
    expected = FedITClient(env).handle("evaluate", "default", instruction(personal(env)))["metrics"]
    assert dict(after) == dict(expected)


def test_a_large_lambda_keeps_the_personal_adapter_near_the_global(make_env):
    start = make_env().initial_adapter()
    gaps = {}
    for lam in (0, 1000):
        env = make_env("method=ditto", f"method.lam={lam}", "method.personal_steps=8")
        DittoClient(env).handle("train", "default", instruction(start))
        gaps[lam] = distance(personal(env), start)
    assert gaps[1000] < 0.5 * gaps[0]


def test_a_client_that_skipped_rounds_continues_from_its_personal_adapter(make_env):
    env = make_env("method=ditto")
    start = env.initial_adapter()
    DittoClient(env).handle("train", "default", instruction(start, server_round=1))
    after_one = personal(env)
    # Round 2 passes it by; in round 3 a fresh client object with the same state goes on.
    DittoClient(make_env("method=ditto", state=env.state)).handle("train", "default", instruction(start, 3))
    fresh = make_env("method=ditto")
    DittoClient(fresh).handle("train", "default", instruction(start, 3))
    assert distance(personal(env), after_one) > 0
    assert distance(personal(env), personal(fresh)) > 0
