"""The app on Flower's deployment runtime: a real SuperLink and SuperNodes on 127.0.0.1, driven by ``flwr run``.

One secure federation (TLS, SuperNode authentication) of three SuperNodes, two
of them with a warm worker, serves three FedRouter runs: in the first a
SuperNode is killed and replaced; in the second a worker is killed mid-run,
and the adapters must equal the simulation's for the same seed; in the third
the ServerApp process is killed mid-round and a new run resumes it from its
checkpoint, ending with the same adapters. A second, plain federation runs on
node-local data files. Each process has a time limit and is stopped in
``finally``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from bench.local_federation import LocalFederation
from fedrouter_app.federation.checkpoint import CHECKPOINT_DIR, latest_checkpoint
from fedrouter_app.model.embedded import cache_root
from fedrouter_app.runners.simulation import simulate
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

NUM_NODES = 3
# The tiny test config for three clients; FedRouter with one global cluster per client's pair of tasks.
BASE = [
    *(o for o in TINY if not o.startswith("num_clients=")),
    f"num_clients={NUM_NODES}",
    "method.n_global=3",
    "eval.at_start=false",
    "eval.every=100",  # evaluate once, after the last round
    "output.save_adapters=true",
]
# Without checkpoints: the end-of-run message that clears clients' saved state is checked in one run only.
OVERRIDES = [*BASE, "checkpoint.every=0"]
# Every message starts a fresh ClientApp process; on a loaded 2-core machine a round takes tens of seconds.
RUN_TIMEOUT = 420.0
# The runs that end by comparing their adapters with the simulation's: 2 rounds, checkpoints on (the default).
WORKER_RUN = [*BASE, "num_rounds=2", "round_timeout=240"]
# Nodes 0 and 1 have a warm worker beside their SuperNode; node 2 does its work in its ClientApp processes.
WORKERS = (0, 1)


@pytest.fixture
def federation(tmp_path: Path, adapter_model: Any) -> Iterator[Callable[..., LocalFederation]]:
    """Start a LocalFederation with the session's model cache (built before any process starts)."""
    started: list[LocalFederation] = []
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.fail("openssl and ssh-keygen are needed for the TLS test: apt-get install openssl openssh-client")

    def start(**kwargs: Any) -> LocalFederation:
        root = tmp_path / f"federation-{len(started)}"
        fed = LocalFederation(root, NUM_NODES, env={"FEDROUTER_CACHE": str(cache_root())}, **kwargs)
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


def test_secure_federation_with_workers_survives_a_killed_supernode_and_worker(
    federation: Callable[..., LocalFederation],
) -> None:
    """One secure deployment, two runs, everything a real federation must survive.

    HTTPS with a certificate from docker/generate-credentials.sh and SuperNode
    authentication: a SuperNode with an unregistered key is turned away. Run 1:
    a SuperNode is SIGKILLed after round 1: the run goes on with the others,
    records the drop, and serves the replacement machine (same partition id,
    another registered key, new node id) again from the next round on. Run 2
    (:func:`check_worker_killed_mid_run`) on the same federation. (One test
    instead of several: every federation and message costs processes here.)
    """
    fed = federation(tls=True, node_auth=True, spare_keys=1, workers=WORKERS)
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

    expected = check_worker_killed_mid_run(fed)
    check_server_killed_mid_round_resumes(fed, expected)


def saved_adapters(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every adapter a run saved, by cluster name."""
    return {p.parent.name: load_file(p) for p in sorted((run_dir / "adapters").glob("*/adapter_model.safetensors"))}


def check_worker_killed_mid_run(fed: LocalFederation) -> dict[str, dict[str, np.ndarray]]:
    """A worker SIGKILLed mid-run is replaced; the adapters equal the simulation's; the run ends cleanly.

    Nodes 0 and 1 work through their workers, node 2 (the replacement of run 1)
    in its ClientApp processes. Checkpoints are on, so the run ends with the
    message that tells clients to drop their saved state: the SuperLink's log
    must show no error for this run.
    """
    name = "workers"
    overrides = WORKER_RUN
    log_before = len((fed.logs / "superlink.log").read_text())
    run_id = fed.submit("fedrouter", [*overrides, f"output.run_name={name}"])
    wait_for(fed, name, lambda r: len(r["rounds"]) >= 1, RUN_TIMEOUT)
    killed = fed.kill_worker(0)
    assert killed, "the worker of node 0 was running"
    results = wait_for(fed, name, completed, RUN_TIMEOUT)
    check_completed_run(fed, run_id, results, name)
    assert all(not r["failures"] for r in results["rounds"]), [r["failures"] for r in results["rounds"]]
    # The ClientApp of node 0 started a worker in place of the killed one.
    assert "serving" in (fed.worker_dir / "node-0.sock.log").read_text()
    worker_log = (fed.logs / "worker-1.log").read_text()
    assert f"[run {run_id} client 1] train handled in" in worker_log, worker_log[-2000:]
    # What was run, as it was run: the connection's name and --stream.
    command = shlex.split(results["run"]["command"])
    assert command[:5] == ["flwr", "run", ".", "deploy", "--stream"] and results["run"]["runtime"] == "deployment"
    superlink_log = (fed.logs / "superlink.log").read_text()[log_before:]
    assert "ERROR" not in superlink_log, superlink_log[-3000:]

    simulated = simulate(["method=fedrouter", *overrides, "output.run_name=simulated"], num_cpus=2)
    deployed, expected = saved_adapters(fed.out_dir / name), saved_adapters(simulated)
    assert deployed.keys() == expected.keys() and len(deployed) == 3
    for cluster, tensors in expected.items():
        assert tensors.keys() == deployed[cluster].keys()
        for key, value in tensors.items():
            np.testing.assert_array_equal(deployed[cluster][key], value, strict=True, err_msg=f"{cluster} {key}")
    return expected


def check_server_killed_mid_round_resumes(fed: LocalFederation, expected: dict[str, dict[str, np.ndarray]]) -> None:
    """The ServerApp process SIGKILLed in round 2, after round 1's checkpoint; a new run resumes from it.

    The killed run writes nothing more (its results still say "running");
    ``checkpoint.resume`` continues from round 1's checkpoint on the server and
    the clients' saved state, and ends with the adapters an uninterrupted run
    (the simulation of the same settings) ends with.
    """
    name = "server-killed"
    run_dir = fed.out_dir / name
    fed.submit("fedrouter", [*WORKER_RUN, f"output.run_name={name}"])
    wait_for(fed, name, lambda r: len(r["rounds"]) >= 1, RUN_TIMEOUT)
    assert fed.kill_serverapps(), "the run's ServerApp process was running"
    killed = fed.results(name)
    assert killed is not None and killed["run"]["status"] == "running" and len(killed["rounds"]) == 1
    assert latest_checkpoint(run_dir / CHECKPOINT_DIR).name == "round-00001"

    fed.submit("fedrouter", [*WORKER_RUN, f"output.run_name={name}", f"checkpoint.resume={run_dir}"])
    results = wait_for(fed, name, completed, RUN_TIMEOUT)
    assert results["run"]["resumed"][0]["after_round"] == 1
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    resumed = saved_adapters(run_dir)
    assert resumed.keys() == expected.keys()
    for cluster, tensors in expected.items():
        for key, value in tensors.items():
            np.testing.assert_array_equal(resumed[cluster][key], value, strict=True, err_msg=f"{cluster} {key}")


def test_nodes_train_and_are_tested_on_their_own_files(federation: Callable[..., LocalFederation], tmp_path) -> None:
    """data=node: every SuperNode names its own file; the server is told task names only.

    Node 0 (with a worker) holds an unlabelled JSON Lines file, node 1 a
    node-side data config naming a CSV file and its own test file, node 2 a
    file without the response column: its registration fails with that reason,
    recorded, and the run goes on with the other two.
    """
    data = tmp_path / "node-data"
    data.mkdir()
    rows = [{"instruction": f"alpha {i} ?", "response": f"a{i}"} for i in range(40)]
    (data / "node0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "node1.csv").write_text("prompt,answer\n" + "".join(f"beta {i} ?,b{i}\n" for i in range(25)))
    (data / "node1-test.csv").write_text("prompt,answer\n" + "".join(f"beta test {i} ?,t{i}\n" for i in range(3)))
    (data / "node1.yaml").write_text(
        "path: node1.csv\ntest_split: node1-test.csv\ntask: local\ninstruction_field: prompt\nresponse_field: answer\n"
    )
    (data / "node2.jsonl").write_text('{"instruction": "no answer here"}\n' * 10)
    node_config = {
        0: f"data='{data / 'node0.jsonl'}'",
        1: f"data='{data / 'node1.yaml'}'",
        2: f"data='{data / 'node2.jsonl'}'",
    }
    fed = federation(workers=(0,), node_config=node_config)
    name = "node-data"
    overrides = [*OVERRIDES, "data=node", "num_rounds=2", f"output.run_name={name}", "round_timeout=240"]
    run_id = fed.submit("fedrouter", overrides)
    results = wait_for(fed, name, completed, RUN_TIMEOUT)
    assert fed.wait_for_run(run_id, timeout=120) == "finished:completed"
    (refused,) = results["rounds"][0]["failures"]
    assert refused["phase"] == "query.hello" and refused["client"] == -1
    # The server learns that the node's data failed, not where it lives; the node's own log says which file.
    assert refused["reason"] == "the node's data could not be read (DataError)"
    node_logs = "".join(path.read_text(errors="replace") for path in fed.logs.glob("supernode-*.log"))
    assert "node2.jsonl: missing column(s) 'response'" in node_logs
    last = results["rounds"][-1]
    train, evaluate = last["train"]["clients"], last["evaluate"]["clients"]
    assert sorted(train) == sorted(evaluate) == ["0", "1"]
    assert train["0"]["num-examples"] == 32 and train["1"]["num-examples"] == 25  # 40 - 8 held out; 25 + own test
    assert evaluate["0"]["tasks"]["local"]["n"] == 4 and evaluate["1"]["tasks"]["local"]["n"] == 3
    # The server's configuration never held a path: nodes named their files themselves.
    assert str(data) not in (fed.out_dir / name / "config.yaml").read_text()
