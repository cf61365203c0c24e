"""A fresh machine: every preset composes with an empty cache and no network, and the suite's network guard holds."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fedrouter_app.cli.sweep import job_overrides
from fedrouter_app.config.compose import CONF_DIR, load_run_config
from tests.no_network import sitecustomize as network_guard

PRESETS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
# A documentation address (RFC 5737, TEST-NET-3): never this machine, never reached.
OUTSIDE = ("203.0.113.1", 443)


def preset_jobs(preset: str) -> list[list[str]]:
    """The distinct jobs of a preset's sweep, seeds aside (a seed changes no setting a config check reads)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            config = compose("config", overrides=[f"sweep={preset}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    jobs = [[o for o in job if not o.startswith("seed=")] for job in job_overrides(config)]
    return [list(job) for job in dict.fromkeys(tuple(job) for job in jobs)]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_offline_with_an_empty_cache(preset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("FEDROUTER_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    jobs = preset_jobs(preset)
    assert jobs
    for job in jobs:
        cfg = load_run_config([f"sweep={preset}", *job])
        assert cfg.data.tasks
    # Nothing was read, downloaded or cached: composing a config does no I/O on data.
    assert not any(cache.iterdir())


def test_an_outbound_connection_fails_the_test_with_a_clear_message():
    before = len(network_guard.attempts)
    with pytest.raises(network_guard.NetworkBlockedError, match=r"tests may not use the network: .*203\.0\.113\.1:443"):
        socket.create_connection(OUTSIDE, timeout=1)
    # The autouse guard would fail this test for the attempt; take it back, since it was the point of the test.
    assert network_guard.attempts[before:] == ["203.0.113.1:443"]
    del network_guard.attempts[before:]


def test_loopback_stays_open():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_python_processes_started_by_tests_are_guarded_too():
    code = f"import socket; socket.create_connection({OUTSIDE!r}, timeout=1)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "NetworkBlockedError: tests may not use the network" in done.stderr
