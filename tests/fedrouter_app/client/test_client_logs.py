"""Client-side log lines carry the run and the client; torch's threads follow the node's CPUs."""

from __future__ import annotations

import logging

import pytest
import torch

from fedrouter_app.client.client_logs import ClientLabel, client_label
from fedrouter_app.runtime.node_threads import apply_cpus, node_cpus


def record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("flwr.fedrouter.x", logging.INFO, __file__, 1, msg, (), None)


def test_lines_logged_while_a_message_is_handled_name_its_run_and_client():
    label = ClientLabel()
    outside = record("idle")
    label.filter(outside)
    assert outside.getMessage() == "idle"
    with client_label(42, 3):
        inside = record("train handled in %.2f s")
        inside.args = (0.5,)
        label.filter(inside)
        label.filter(inside)  # a second handler on the way does not label it twice
    assert inside.getMessage() == "[run 42 client 3] train handled in 0.50 s"


def test_torch_threads_follow_the_nodes_cpus(monkeypatch):
    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "")  # restored after the test, whatever apply_cpus sets
    try:
        assert node_cpus({"num-cpus": 1}) == 1 and node_cpus({}) is None
        apply_cpus(node_cpus({"num-cpus": 1}))
        assert torch.get_num_threads() == 1
        apply_cpus(None)  # not configured: left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="num-cpus must be a whole number"):
            node_cpus({"num-cpus": bad})
