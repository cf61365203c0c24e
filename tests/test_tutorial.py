"""The tutorial's commands, run as written, with fewer rounds, clients and examples (docs/tutorial.md)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
# What makes each sweep of the tutorial small enough for the suite; nothing else about the commands changes.
SHORTER = [
    "num_clients=4",
    "num_rounds=1",
    "train.local_steps=2",
    "scenario.train_examples_per_client=16",
    "scenario.test_examples_per_task=2",
    "output.save_adapters=false",
]


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", text, flags=re.S)]


def fedrouter() -> list[str]:
    """The ``fedrouter`` command of this environment (its console script, else the module)."""
    script = shutil.which("fedrouter", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "fedrouter_app.cli.main"]


def test_the_tutorials_commands_run_as_written(tmp_path):
    found = blocks(TUTORIAL.read_text())
    install, *steps = found
    assert install[0] == "bash" and "pip install" in install[1]  # the environment running this test is installed
    ran = []
    for language, code in steps:
        if language == "python":
            done = subprocess.run(
                [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
        else:
            words = shlex.split(code)
            if words[:1] == ["fedrouter"]:
                extra = SHORTER if words[1] == "sweep" else []
                done = subprocess.run(
                    [*fedrouter(), *words[1:], *extra], cwd=tmp_path, capture_output=True, text=True, timeout=600
                )
            else:
                done = subprocess.run(code, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        ran.append((code, done.stdout))
    assert len(ran) == 5
    # What the tutorial tells the reader to look at is there.
    assert "own tasks:" in ran[1][1] and "all tasks:" in ran[1][1]
    report = tmp_path / "outputs" / "reports" / "tutorial"
    assert (report / "report.md").exists() and (report / "routing-fedrouter-dual-global.png").exists()
    assert "routing-fedrouter-dual-global.png" in ran[3][1]
