"""FedRouter's degenerate settings reproduce the baselines exactly (same seed, same data)."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrouter_app.federation.records import read_local_adapter
from fedrouter_app.runners.inprocess import NODE_OFFSET, run_inprocess
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

SMALL = tiny_overrides("scenario=single", "data.tasks=[copy,reverse,capital,sentiment]", "train.local_steps=5")


def saved(run_dir, name):
    return load_file(str(run_dir / "adapters" / name / "adapter_model.safetensors"))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_one_global_cluster_is_fedit():
    fedit, fedit_dir, _ = run_inprocess([*SMALL, "method=fedit"], 4)
    router, router_dir, _ = run_inprocess([*SMALL, "method=fedrouter", "method.n_local=1", "method.n_global=1"], 4)
    assert_same(saved(fedit_dir, "global"), saved(router_dir, "cluster-0"))
    for r_fedit, r_router in zip(fedit["rounds"], router["rounds"], strict=True):
        assert r_fedit["evaluate"]["per_task"] == r_router["evaluate"]["per_task"]
        for client, metrics in r_fedit["train"]["clients"].items():
            assert metrics["train-loss"] == r_router["train"]["clients"][client]["train-loss"]


def test_one_global_cluster_per_client_is_local():
    _, _, local_grid = run_inprocess([*SMALL, "method=local"], 4)
    router, router_dir, _ = run_inprocess([*SMALL, "method=fedrouter", "method.n_local=1", "method.n_global=4"], 4)
    assignment = router["rounds"][0]["strategy"]["setup"]["clustering"]["assignment"]
    assert sorted(k for (k,) in assignment.values()) == [0, 1, 2, 3]
    for client, (k,) in assignment.items():
        state = local_grid.contexts[NODE_OFFSET + int(client)].state
        template = {key: tuple(v.shape) for key, v in state["local.adapter"].items()}
        local_adapter = read_local_adapter(state["local.adapter"], template)
        assert_same(local_adapter, saved(router_dir, f"cluster-{k}"))
