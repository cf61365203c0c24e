import numpy as np
from flwr.app import RecordDict

from fedrouter_app.rounds import Reply
from strategies.tap import SHARED, TAP, average_by_key, payload_name, reply_name, task_key

TEMPLATE = {"m.q.lora_A.weight": (2, 3), "m.q.lora_B.weight": (3, 2)}


def adapter(v):
    return {k: np.full(s, v, np.float32) for k, s in TEMPLATE.items()}


def test_keywise_average_over_the_clients_holding_each_key():
    bank = {task_key("c"): adapter(7.0)}
    uploads = [
        ({SHARED: adapter(1.0), task_key("a"): adapter(2.0)}, 10.0),
        ({SHARED: adapter(4.0), task_key("b"): adapter(5.0)}, 30.0),
    ]
    out = average_by_key(uploads, bank)
    np.testing.assert_allclose(out[SHARED]["m.q.lora_A.weight"], 3.25)
    np.testing.assert_allclose(out[task_key("a")]["m.q.lora_A.weight"], 2.0)
    np.testing.assert_allclose(out[task_key("b")]["m.q.lora_B.weight"], 5.0)
    np.testing.assert_allclose(out[task_key("c")]["m.q.lora_A.weight"], 7.0)  # nobody sent it


def test_clients_receive_only_their_keys(make_cfg):
    strategy = TAP(make_cfg("method=tap"), TEMPLATE)
    strategy.keys = {0: [SHARED, task_key("a")], 1: [SHARED, task_key("b")]}
    replies = [
        Reply(
            client=0,
            metrics={"num-examples": 10},
            adapters={reply_name(SHARED): adapter(1.0), reply_name(task_key("a")): adapter(2.0)},
            content=RecordDict(),
        ),
        Reply(
            client=1,
            metrics={"num-examples": 10},
            adapters={reply_name(SHARED): adapter(3.0), reply_name(task_key("b")): adapter(4.0)},
            content=RecordDict(),
        ),
    ]
    strategy.aggregate_train(1, replies)
    payloads = strategy.configure_train(2, [0, 1])
    assert sorted(payloads[0].array_records) == [payload_name(SHARED), payload_name(task_key("a"))]
    assert sorted(payloads[1].array_records) == [payload_name(SHARED), payload_name(task_key("b"))]
    assert sorted(strategy.adapters()) == [SHARED, task_key("a"), task_key("b")]
