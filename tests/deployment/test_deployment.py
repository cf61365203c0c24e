"""The app on Flower's deployment runtime: a real SuperLink and SuperNodes on 127.0.0.1, driven by ``flwr run``.

One run of FedRouter with three SuperNodes over TLS with SuperNode
authentication, in which a SuperNode is killed and replaced. Each process has
a time limit and is stopped in ``finally``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedrouter_app.model.embedded import cache_root
from tests.conftest import TINY
from tests.deployment.federation import LocalFederation

NUM_NODES = 3
# The tiny test config for three clients; FedRouter with one global cluster per client's pair of tasks.
OVERRIDES = [
    *(o for o in TINY if not o.startswith("num_clients=")),
    f"num_clients={NUM_NODES}",
    "method.n_global=3",
    "eval.at_start=false",
    "eval.every=100",  # evaluate once, after the last round
    "output.save_adapters=true",
    # No checkpoints: each message costs a fresh ClientApp process here, and the end-of-run message that
    # clears clients' saved state would add a phase; checkpoints and resume have their own tests.
    "checkpoint.every=0",
]
# Every message starts a fresh ClientApp process; on a loaded 2-core machine a round takes tens of seconds.
RUN_TIMEOUT = 420.0


@pytest.fixture
def federation(tmp_path: Path, adapter_model: Any) -> Iterator[Callable[..., LocalFederation]]:
    """Start a LocalFederation with the session's model cache (built before any process starts)."""
    started: list[LocalFederation] = []
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.fail("openssl and ssh-keygen are needed for the TLS test: apt-get install openssl openssh-client")

    def start(**kwargs: Any) -> LocalFederation:
        fed = LocalFederation(tmp_path, NUM_NODES, env={"FEDROUTER_CACHE": str(cache_root())}, **kwargs)
        started.append(fed)
        return fed.start()

    try:
        yield start
    finally:
        for fed in started:
            fed.close()


def wait_for(fed: LocalFederation, name: str, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict:
    """Poll the run's results.json until ``done(results)``; fail with the logs on timeout or a failed run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = fed.results(name)
        if results is not None:
            if results["run"]["status"] == "failed":
                pytest.fail(f"run failed: {results['run'].get('error')}\n{fed.log_tail()}")
            if done(results):
                return results
        if fed.superlink is None or fed.superlink.poll() is not None:
            pytest.fail(f"the SuperLink exited\n{fed.log_tail()}")
        time.sleep(1)
    pytest.fail(f"run {name} not there after {timeout:g} s\n{fed.log_tail()}")


def completed(results: dict[str, Any]) -> bool:
    return results["run"]["status"] == "completed"


def check_completed_run(fed: LocalFederation, run_id: int, results: dict[str, Any], name: str) -> None:
    """What every finished run must show: Flower's status, metrics of every node, saved adapters."""
    assert fed.wait_for_run(run_id, timeout=120) == "finished:completed"
    assert results["run"]["method"] == "fedrouter"
    last = results["rounds"][-1]
    assert sorted(last["evaluate"]["clients"]) == [str(i) for i in range(NUM_NODES)]
    for metrics in last["evaluate"]["clients"].values():
        assert metrics["tasks"], "every node reports per-task metrics"
    assert 0.0 <= results["final"]["mean"]["score"] <= 1.0 and results["final"]["mean"]["loss"] > 0
    assert any((fed.out_dir / name / "adapters").iterdir()), "the server saved its adapters"


def test_secure_federation_survives_a_killed_supernode(federation: Callable[..., LocalFederation]) -> None:
    """One secure deployment, one run, everything a real federation must survive.

    HTTPS with a certificate from docker/generate-credentials.sh and SuperNode
    authentication: a SuperNode with an unregistered key is turned away. A
    SuperNode is SIGKILLed after round 1: the run goes on with the others,
    records the drop, and serves the replacement machine (same partition id,
    another registered key, new node id) again from the next round on. (One
    test instead of two: every message costs a fresh ClientApp process here.)
    """
    fed = federation(tls=True, node_auth=True, spare_keys=1)
    intruder_key = fed.credentials / "intruder"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(intruder_key)], check=True)
    intruder = fed.spawn([*fed.supernode_args(0, key=intruder_key), "--max-retries", "0"], "intruder")
    name = "fault"
    run_id = fed.submit("fedrouter", [*OVERRIDES, "num_rounds=3", f"output.run_name={name}", "round_timeout=240"])
    wait_for(fed, name, lambda r: len(r["rounds"]) >= 1, RUN_TIMEOUT)
    fed.kill_node(2)  # round 2 has started or is about to: its instruction to node 2 gets no answer
    # The replacement starts at once: round 2 waits for the SuperLink to give up on the dead node (missed
    # heartbeats, up to a minute), which leaves the new SuperNode time to connect before round 3 says hello.
    # It needs a key of its own: the SuperLink refuses a key whose node it still counts as online.
    fed.start_node(2, key=fed.credentials / "supernode-spare-0")
    results = wait_for(fed, name, completed, RUN_TIMEOUT)
    check_completed_run(fed, run_id, results, name)

    # A SuperNode whose public key was never registered is turned away and exits.
    assert intruder.wait(timeout=60) != 0, "a SuperNode with an unregistered key connected"
    assert "failed to activate supernode" in (fed.logs / "intruder.log").read_text().lower()
    assert "no supernode found with the given public key" in (fed.logs / "superlink.log").read_text().lower()

    first, second, third = results["rounds"]
    # Round 1: everyone trained, nothing failed.
    assert sorted(first["train"]["clients"]) == ["0", "1", "2"] and not first["failures"]
    # Round 2: node of client 2 dropped; the others' updates were aggregated.
    assert sorted(second["train"]["clients"]) == ["0", "1"]
    (drop,) = second["failures"]
    assert drop["client"] == 2 and drop["phase"] == "train" and drop["node"] != 0
    assert drop["reason"].startswith(("node unavailable", "no reply within")), drop
    # Round 3: the replacement SuperNode joined under a new node id and trained and evaluated again.
    assert set(third["joined"]) == {"2"} and third["joined"]["2"] != drop["node"]
    assert sorted(third["train"]["clients"]) == ["0", "1", "2"] and not third["failures"]
    # Nothing aggregated was lost: the clustering made at registration still holds (no new setup phase)
    # and the restarted client trained the clusters it was assigned to in round 1.
    assert "setup" in first["strategy"] and "setup" not in second["strategy"] and "setup" not in third["strategy"]
    assert third["train"]["clients"]["2"]["train-steps"] > 0
