"""A worker's owner: which process a ClientApp names, and the watcher that notices it exit.

The real worker process exiting with its owner is tested in ``test_worker.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedrouter_app.runtime import worker_client
from fedrouter_app.runtime.worker import main, process_gone, watch_owner
from fedrouter_app.runtime.worker_channel import WorkerAddress

WATCHERS = [
    pytest.param(
        True,
        id="pidfd",
        marks=pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd on this platform"),
    ),
    pytest.param(False, id="poll"),
]


@pytest.fixture
def helper() -> Iterator[subprocess.Popen]:
    """A process that would live for minutes: the owner a test kills."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("use_pidfd", WATCHERS)
def test_the_watcher_calls_back_soon_after_its_owner_exits(helper, use_pidfd):
    exited = threading.Event()
    watcher = watch_owner(helper.pid, exited.set, interval=0.05, use_pidfd=use_pidfd)
    assert not exited.wait(0.5), "called back while the owner lives"
    helper.kill()
    helper.wait()
    assert exited.wait(5)
    watcher.join(timeout=5)
    assert not watcher.is_alive()


@pytest.mark.parametrize("use_pidfd", WATCHERS)
def test_an_owner_killed_and_not_yet_reaped_counts_as_gone(helper, use_pidfd):
    exited = threading.Event()
    watch_owner(helper.pid, exited.set, interval=0.05, use_pidfd=use_pidfd)
    helper.kill()  # a zombie until the fixture waits for it
    assert exited.wait(5)


@pytest.mark.parametrize("use_pidfd", WATCHERS)
def test_an_owner_already_gone_is_reported_at_once(use_pidfd):
    exited = threading.Event()
    watch_owner(gone_pid(), exited.set, interval=0.05, use_pidfd=use_pidfd)
    assert exited.wait(5)


def test_process_gone_tells_live_zombie_and_reaped_processes_apart(helper):
    assert not process_gone(os.getpid())
    assert not process_gone(helper.pid)
    helper.kill()
    os.waitid(os.P_PID, helper.pid, os.WEXITED | os.WNOWAIT)  # exited, still unreaped: a zombie
    assert process_gone(helper.pid)
    assert process_gone(gone_pid())


CLIENTAPP = "/opt/venv/bin/flwr-clientapp"


@pytest.mark.parametrize(
    ("argv", "owner"),
    [
        ([CLIENTAPP, "--runtime-api-address", "127.0.0.1:9094", "--token", "t", "--parent-pid", "4321"], 4321),
        ([CLIENTAPP, "--insecure", "--parent-pid=4321"], 4321),
        ([CLIENTAPP, "--runtime-api-address", "127.0.0.1:9094"], os.getppid()),
        ([CLIENTAPP, "--parent-pid", "1"], None),
        (["/usr/bin/python", "-m", "pytest", "--parent-pid", "4321"], os.getpid()),
        ([], os.getpid()),
    ],
    ids=["parent-pid", "parent-pid=", "no-parent-pid", "left-to-init", "long-lived-process", "no-argv"],
)
def test_the_owner_is_flowers_clientapp_launcher_or_this_long_lived_process(argv, owner):
    assert worker_client.node_owner_pid(argv) == owner


def test_a_clientapp_starts_its_worker_with_the_owner(tmp_path, monkeypatch):
    started: list[list[str]] = []

    class Recorded:
        pid = 99999

        def __init__(self, args: list[str], **kwargs: Any) -> None:
            started.append(args)

    monkeypatch.setattr(worker_client.subprocess, "Popen", Recorded)
    monkeypatch.setattr(sys, "argv", [CLIENTAPP, "--insecure", "--parent-pid", "4321"])
    sock = tmp_path / "node.sock"
    worker_client.start_worker(WorkerAddress(sock, Path(f"{sock}.secret")), cpus=1)
    (args,) = started
    assert args[args.index("--owner-pid") + 1] == "4321"
    assert "--managed" in args and "--idle-exit" in args


def test_the_worker_refuses_init_as_its_owner(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--socket", str(tmp_path / "node.sock"), "--owner-pid", "1"])
    assert exit_info.value.code == 2
    assert "--owner-pid must name a process other than init" in capsys.readouterr().err
