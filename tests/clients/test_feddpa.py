import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.feddpa import LOCAL_ADAPTER, FedDPAClient, instance_weights
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter, read_local_adapter


def test_omega_is_lambda_times_mean_cosine():
    e = np.array([[1.0, 0.0], [1.0, 1.0]])
    refs = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    # Row 0: cosines 1, 0, 1/sqrt2. Row 1: 1/sqrt2, 1/sqrt2, 1.
    expected = 0.5 * np.array([(1 + 0 + 2**-0.5) / 3, (2 * 2**-0.5 + 1) / 3])
    np.testing.assert_allclose(instance_weights(e, refs, 0.5), expected)


def instruction(env, adapter, server_round, num_rounds=3):
    return RecordDict(
        {
            ADAPTER: adapter_record(adapter),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": num_rounds, "lr": 3e-3}),
        }
    )


@pytest.mark.slow
def test_global_phase_is_fedit_and_local_phase_starts_in_round_two(make_env):
    from fedrouter_app.clients.fedit import FedITClient

    env = make_env("method=feddpa")
    start = env.initial_adapter()
    r1 = FedDPAClient(env).handle("train", "default", instruction(env, start, 1))
    assert LOCAL_ADAPTER not in env.state  # FedDPA-T trains the local adapter from round 2 on
    fedit = FedITClient(make_env("method=fedit")).handle("train", "default", instruction(env, start, 1))
    template = env.model().template
    a, b = read_adapter(r1[ADAPTER], template), read_adapter(fedit[ADAPTER], template)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    FedDPAClient(env).handle("train", "default", instruction(env, start, 2))
    local = read_local_adapter(env.state[LOCAL_ADAPTER], template)
    assert any(not np.array_equal(local[k], start[k]) for k in start)


@pytest.mark.slow
def test_a_client_that_skipped_rounds_continues_from_its_local_adapter(make_env):
    env = make_env("method=feddpa")
    start = env.initial_adapter()
    FedDPAClient(env).handle("train", "default", instruction(env, start, 2))
    after_round_2 = read_local_adapter(env.state[LOCAL_ADAPTER], env.model().template)
    again = make_env("method=feddpa", state=env.state)
    client = FedDPAClient(again)
    assert all(np.array_equal(client.local_adapter(start)[k], after_round_2[k]) for k in start)


@pytest.mark.slow
def test_batched_dynamic_mixing_equals_one_instance_at_a_time(make_env):
    env = make_env("method=feddpa", "method.similarity_on=global")
    client = FedDPAClient(env)
    start = env.initial_adapter()
    client.handle("train", "default", instruction(env, start, 2))
    local = read_local_adapter(env.state[LOCAL_ADAPTER], env.model().template)
    rng = np.random.default_rng(0)
    global_adapter = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
    weights = client.global_weights(env.data.test, local)
    assert weights.shape == (len(env.data.test),) and (weights <= 0.5).all() and len(set(weights.round(6))) > 1
    batched = client.evaluate(instruction(env, global_adapter, 2), client_info(2))["metrics"]
    one_at_a_time = make_env("method=feddpa", "method.similarity_on=global", "eval.batch_size=1", state=env.state)
    single = FedDPAClient(one_at_a_time).evaluate(instruction(env, global_adapter, 2), client_info(2))["metrics"]
    for key, value in batched.items():
        if key.endswith((".exact_match", ".rougeL", ".loss")):
            assert single[key] == pytest.approx(value, abs=1e-4), key


def client_info(server_round):
    from fedrouter_app.client.client_env import RoundInfo

    return RoundInfo(server_round=server_round, num_rounds=3, lr=3e-3)


@pytest.mark.slow
def test_static_mixing_reports_the_configured_weight(make_env):
    env = make_env("method=feddpa", "method.inference=static", "method.static_weight=0.25")
    FedDPAClient(env).handle("train", "default", instruction(env, env.initial_adapter(), 2))
    metrics = FedDPAClient(env).handle("evaluate", "default", instruction(env, env.initial_adapter(), 2))["metrics"]
    assert metrics["global-weight.own"] == pytest.approx(0.25)
