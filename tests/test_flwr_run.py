"""The README's main path: `flwr run .` on the local simulation runtime, as a user runs it.

Settings come as the flat run-config keys of pyproject.toml plus `overrides`; num_clients is not given, so the run
has one client per SuperNode of the federation.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.processes import pids_mentioning, stop
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not on PATH")
def test_flwr_run_completes_and_writes_results(tmp_path):
    flwr_home, out_dir = tmp_path / "flwr", tmp_path / "out"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FEDROUTER_OUTPUT_DIR": str(out_dir),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    # The tiny settings, less those given as keys of their own or left to the federation.
    flat = ("num_clients", "num_rounds", "train.local_steps")
    overrides = " ".join(o for o in tiny_overrides() if o.split("=")[0] not in flat)
    command = [
        "flwr",
        "run",
        ".",
        "--stream",
        "--run-config",
        f"method='local' num-server-rounds=2 local-steps=3 run-name='cli' overrides='{overrides}'",
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
    ]
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        # `flwr run` leaves a detached local SuperLink behind; its arguments name FLWR_HOME.
        stop(pids_mentioning(str(flwr_home)))
    log = proc.stdout + proc.stderr
    results_file = out_dir / "cli" / "results.json"
    assert results_file.exists(), log[-4000:]
    results = json.loads(results_file.read_text())
    assert results["run"]["status"] == "completed", log[-4000:]
    assert results["run"]["method"] == "local" and len(results["rounds"]) == 3
    assert results["config"]["num_clients"] == 3 and results["config"]["train"]["local_steps"] == 3
    assert sorted(results["rounds"][-1]["train"]["clients"]) == ["0", "1", "2"]
    assert "round 2/2" in log
