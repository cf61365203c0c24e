from types import SimpleNamespace

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.clients.fedprox import FedProxClient, proximal_term
from fedrouter_app.federation.records import ADAPTER, adapter_record, read_adapter


def instruction(state, server_round=1, lr=3e-3):
    return RecordDict(
        {
            ADAPTER: adapter_record(state),
            "config": ConfigRecord({"server-round": server_round, "num-rounds": 2, "lr": lr}),
        }
    )


def test_proximal_term_is_half_mu_squared_distance_to_a_fixed_anchor():
    anchor = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([[0.0]], np.float32)}
    params = {"a": torch.nn.Parameter(torch.tensor([2.0, 0.0])), "b": torch.nn.Parameter(torch.tensor([[3.0]]))}
    term = proximal_term(anchor, 0.5)(SimpleNamespace(params=params))
    value = term()
    assert value.item() == 0.25 * (1.0 + 4.0 + 9.0)
    value.backward()
    np.testing.assert_allclose(params["a"].grad.numpy(), [0.5, -1.0])  # mu * (w - anchor)
    with torch.no_grad():
        params["a"].copy_(torch.tensor([1.0, 2.0]))
    anchor["b"][0, 0] = 3.0  # the term copied its anchor: later edits do not reach it
    assert term().item() == 0.25 * 9.0


def trained(client, env, start):
    return read_adapter(client(env).handle("train", "default", instruction(start))[ADAPTER], env.model().template)


def test_zero_mu_trains_exactly_as_fedit(make_env):
    env = make_env("method=fedprox", "method.mu=0")
    start = env.initial_adapter()
    prox, fedit = trained(FedProxClient, env, start), trained(FedITClient, env, start)
    for key in start:
        np.testing.assert_array_equal(prox[key], fedit[key])


def distance(a, b):
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_a_large_mu_keeps_the_adapter_near_the_received_one(make_env):
    start = make_env().initial_adapter()
    free = trained(FedProxClient, make_env("method=fedprox", "method.mu=0"), start)
    tied = trained(FedProxClient, make_env("method=fedprox", "method.mu=100"), start)
    assert distance(tied, start) < 0.5 * distance(free, start)
