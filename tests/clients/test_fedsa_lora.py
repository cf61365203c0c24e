import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.clients.fedsa_lora import OWN_B, FedSALoRAClient
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter
from fedrouter_app.model.lora import is_lora_a, is_lora_b
from fedrouter_app.strategies.fedsa_lora import LORA_A, a_template


def instruction(a, server_round=1, lr=3e-3):
    return RecordDict(
        {
            LORA_A: adapter_record(a),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": 2, "lr": lr}),
        }
    )


def only(state, keep):
    return {k: v for k, v in state.items() if keep(k)}


def test_first_round_trains_the_received_a_with_zero_b_and_keeps_b(make_env):
    env = make_env("method=fedsa_lora")
    initial = env.initial_adapter()
    reply = FedSALoRAClient(env).handle("train", "default", instruction(only(initial, is_lora_a)))
    assert list(reply.array_records) == [LORA_A]
    sent = read_adapter(reply[LORA_A], a_template(env.model().template))
    # The same training as FedIT's from the initial adapter (whose B is zero).
    fedit = FedITClient(env).handle(
        "train", "default", RecordDict({ADAPTER: adapter_record(initial), **instruction({})})
    )
    expected = read_adapter(fedit[ADAPTER], env.model().template)
    assert all(np.array_equal(sent[k], expected[k]) for k in sent)
    kept = env.state[OWN_B]
    assert set(kept.keys()) == set(only(expected, is_lora_b)) and all(kept[k].numpy().any() for k in kept)
    assert all(np.array_equal(kept[k].numpy(), expected[k]) for k in kept)


def test_later_rounds_combine_the_new_a_with_the_kept_b(make_env):
    env = make_env("method=fedsa_lora")
    initial = env.initial_adapter()
    FedSALoRAClient(env).handle("train", "default", instruction(only(initial, is_lora_a)))
    kept = {k: env.state[OWN_B][k].numpy() for k in env.state[OWN_B]}
    new_a = {k: v * 0.5 for k, v in only(initial, is_lora_a).items()}
    metrics = FedSALoRAClient(env).handle("evaluate", "default", instruction(new_a))["metrics"]
    full = RecordDict({ADAPTER: adapter_record({**new_a, **kept})})
    assert dict(metrics) == dict(FedITClient(env).handle("evaluate", "default", full)["metrics"])
