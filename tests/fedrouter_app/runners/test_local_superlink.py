"""``fedrouter stop``: the local SuperLink that flwr run left running is stopped by its process, no other."""

from __future__ import annotations

import subprocess
import sys
import time

from fedrouter_app.cli.main import main
from fedrouter_app.runners import local_superlink


def sleeper(*args: str) -> subprocess.Popen:
    """A process whose command line carries ``args`` (as flower-superlink's would), sleeping until stopped."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])


def test_only_the_local_superlink_is_stopped(tmp_path, monkeypatch, capsys):
    log = tmp_path / "local-superlink" / "superlink.log"
    monkeypatch.setattr(local_superlink, "local_superlink_log", lambda: log)
    local = sleeper("flower-superlink", "--insecure", "--log-file", str(log))
    deployed = sleeper("flower-superlink", "--log-file", str(tmp_path / "production.log"))
    other = sleeper("--log-file", str(log))  # not a SuperLink
    try:
        time.sleep(0.5)
        assert local_superlink.local_superlink_pids() == [local.pid]
        assert main(["stop"]) == 0
        assert f"stopped the local SuperLink (pid {local.pid})" in capsys.readouterr().out
        assert local.wait(timeout=10) is not None
        assert deployed.poll() is None and other.poll() is None
        assert main(["stop"]) == 0 and "no local SuperLink is running" in capsys.readouterr().out
    finally:
        for process in (local, deployed, other):
            process.kill()
            process.wait()
