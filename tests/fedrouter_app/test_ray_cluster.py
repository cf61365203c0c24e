"""A real Ray cluster of two nodes on this machine: clients spread over both, same adapters as one local node.

Each node is a separate Ray node (its own raylet and object store, the head
with the GCS) with one CPU, so the two one-CPU client actors cannot share a
node. The cluster keeps its address file and sessions in a temporary
directory of its own (``RAY_TMPDIR``), so that no ``ray.init()`` elsewhere on
the machine finds and joins it, and takes free ports, so that it does not
collide with another Ray running here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from ray.cluster_utils import Cluster, cluster_not_supported
from safetensors.numpy import load_file

from fedrouter_app import actor_pool
from fedrouter_app.simulation import simulate
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.skipif(cluster_not_supported, reason="ray.cluster_utils.Cluster does not run on Windows")

NODES = 2
# Six clients on two actors: three client calls per actor and phase, so a round shows the per-actor queue.
# Evaluation only at the start and the end: round 1 is training (and the registration check) alone.
# Sixteen local steps make training most of a client call, as in real runs.
OVERRIDES = ("num_clients=6", "num_rounds=2", "train.local_steps=16", "eval.every=2", "output.save_adapters=true")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node and a worker node, one CPU each, stopped (with Ray in this process) even when a test fails."""
    # Short: Ray's Unix sockets live under it, and a socket path has at most 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="frray-", dir="/tmp")
    actor_pool.release_actors()
    ray.shutdown()
    started: Cluster | None = None
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp_dir)
        try:
            # The head's dashboard agent would take Ray's fixed default port; None lets the OS pick one.
            head = {"num_cpus": 1, "include_dashboard": False, "dashboard_agent_listen_port": None}
            started = Cluster(initialize_head=True, head_node_args=head)
            for _ in range(NODES - 1):
                started.add_node(num_cpus=1)
            started.wait_for_nodes(timeout=60)
            yield started
        finally:
            actor_pool.release_actors()
            ray.shutdown()
            if started is not None:
                started.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def saved_adapters(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every adapter a run saved, by name."""
    return {p.parent.name: load_file(p) for p in sorted((run_dir / "adapters").glob("*/adapter_model.safetensors"))}


def losses(results: dict[str, Any]) -> list[Any]:
    """Every client's training loss and the held-out loss, round by round."""
    rounds = results["rounds"]
    train = [{c: m["train-loss"] for c, m in r["train"]["clients"].items()} for r in rounds]
    return train + [r["evaluate"].get("mean", {}).get("loss") for r in rounds]


def kept_actors_at_work() -> list[tuple[str, bool]]:
    """Each kept client actor's Ray node and whether it has loaded the base model (served a client)."""

    # Defined here, not at module level, so that Ray ships the function itself rather than an import of this module.
    def where(_actor: object) -> tuple[str, bool]:
        from fedrouter_app.model import loading

        return ray.get_runtime_context().get_node_id(), bool(loading._cache)

    assert actor_pool._kept is not None, "the run kept no actors"
    return ray.get([actor.__ray_call__.remote(where) for actor in actor_pool._kept.pool.pool], timeout=60)


def round_costs(results: dict[str, Any], actors: int) -> list[dict[str, float]]:
    """Each training round's seconds against ``ceil(clients / actors)`` x a client's mean training seconds.

    What the model leaves out (``rest``) is the server's time and each call's
    time outside training: messages, the adapter swap, registration checks and,
    in evaluating rounds, evaluation.
    """
    rows = []
    for r in results["rounds"]:
        train = [m["train-seconds"] for m in r["train"]["clients"].values() if "train-seconds" in m]
        if train:
            waves = math.ceil(len(train) / actors)
            queued = waves * float(np.mean(train))
            rows.append(
                {
                    "round": r["round"],
                    "seconds": r["seconds"],
                    "clients": len(train),
                    "waves": waves,
                    "train_mean": float(np.mean(train)),
                    "waves_x_train": queued,
                    "rest": r["seconds"] - queued,
                    "evaluated": bool(r["evaluate"]["clients"]),
                }
            )
    return rows


def test_flowers_ray_backend_joins_the_cluster_named_by_ray_address(cluster, monkeypatch):
    """What ``flwr run``'s simulation runtime does: ``ray.init`` without an address, so ``RAY_ADDRESS`` decides."""
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # Flower's init_ray rewrites it
    try:
        # The backend config flwr-simulation builds from a federation config without init-args.
        RayBackend({"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {}})
        assert ray.get_runtime_context().gcs_address == cluster.address
        assert sum(1 for node in ray.nodes() if node["Alive"]) == NODES
    finally:
        ray.shutdown()
    # A CPU count in the federation config (init-args-num-cpus) cannot be combined with joining a cluster.
    with pytest.raises(ValueError, match="existing cluster"):
        RayBackend({"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}})
    ray.shutdown()


def test_clients_run_on_two_nodes_and_train_what_one_node_trains(cluster):
    spread_dir = simulate(
        tiny_overrides(*OVERRIDES, "output.run_name=cluster"), ray_address=cluster.address, keep_actors=True
    )
    at_work = kept_actors_at_work()
    assert len(at_work) == NODES
    assert len({node for node, _ in at_work}) == NODES, at_work
    assert all(loaded for _, loaded in at_work), f"an actor never served a client: {at_work}"
    # Drop the cluster's actors and this process's connection to it before a local Ray starts.
    actor_pool.release_actors()
    assert not ray.is_initialized()

    local_dir = simulate(tiny_overrides(*OVERRIDES, "output.run_name=local"), num_cpus=NODES, keep_actors=False)
    assert not ray.is_initialized()

    spread, local = (json.loads((d / "results.json").read_text()) for d in (spread_dir, local_dir))
    assert spread["run"]["status"] == local["run"]["status"] == "completed"
    assert losses(spread) == losses(local)
    expected, got = saved_adapters(local_dir), saved_adapters(spread_dir)
    assert got.keys() == expected.keys() and expected
    for name, tensors in expected.items():
        assert tensors.keys() == got[name].keys()
        for key, value in tensors.items():
            np.testing.assert_array_equal(got[name][key], value, strict=True, err_msg=f"{name} {key}")
    # The per-round cost, for the record (pytest -s shows it); timings are not asserted.
    for where, results in (("two nodes", spread), ("one node", local)):
        for row in round_costs(results, actors=NODES):
            print(f"round cost, {where}:", json.dumps({k: round(v, 3) for k, v in row.items()}))
