"""The deployment page's first three blocks (docs/deploy.md), run as written: start, run and stop a federation of
three SuperNodes with warm workers, each block in a shell of its own, twice in a row."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.processes import stop
from fedrouter_app.federation.results import load_results
from fedrouter_app.model.embedded import cache_root

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "deploy.md"
ACTIVATE = ". .venv/bin/activate"
PIDS = REPO / "outputs" / "logs" / "federation.pids"


def page_blocks() -> list[str]:
    """The page's first three bash blocks: start, run, stop."""
    return re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)[:3]


def shell(script: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``script`` in a bash of its own in the repository (this interpreter's environment for ``.venv``)."""
    script = script.replace(ACTIVATE, f". {Path(sys.prefix) / 'bin' / 'activate'}")
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_deploy_page_starts_runs_and_stops_a_federation_twice_from_fresh_shells(
    tmp_path: Path, adapter_model: Any
) -> None:
    start, run, stop_block = page_blocks()
    assert all(ACTIVATE in block for block in (start, run)), "the start and run blocks activate the environment"
    assert "flower-superlink" in start and "flwr run" in run and "kill" in stop_block
    if PIDS.exists():
        pytest.skip(f"{PIDS} exists: a federation from the deployment page seems to be running here")
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FEDROUTER_OUTPUT_DIR": str(tmp_path / "outputs"),
        "FEDROUTER_CACHE": str(cache_root()),  # the session's model, built before any process starts
    }
    recorded: list[int] = []
    try:
        for attempt in (1, 2):
            started = shell(start, env, timeout=120)
            assert started.returncode == 0, started.stdout + started.stderr
            recorded = [int(pid) for pid in PIDS.read_text().split()]
            assert len(recorded) == 7  # the SuperLink, three workers, three SuperNodes
            ran = shell(run, env, timeout=600)
            assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
            stopped = shell(stop_block, env, timeout=60)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert not PIDS.exists()
            assert not [pid for pid in recorded if Path(f"/proc/{pid}").exists()], "the stop block left processes"
            runs = sorted((tmp_path / "outputs").iterdir())
            assert len(runs) == attempt
            results = load_results(runs[-1])
            assert results["run"]["status"] == "completed" and results["run"]["runtime"] == "deployment"
            assert [r["round"] for r in results["rounds"]][-1] == 3
            assert sorted(results["rounds"][-1]["train"]["clients"]) == ["0", "1", "2"]
    finally:
        stop([pid for pid in recorded if Path(f"/proc/{pid}").exists()], grace=5)
        PIDS.unlink(missing_ok=True)
