"""Stopping the SuperLink that ``flwr run`` starts in the background, by its own process, never by name.

``flwr run`` against the local federation starts ``flower-superlink`` detached
and leaves it running for later runs. Killing every ``flower-superlink`` by name
would also stop real deployments on the same machine; this finds the one whose
``--log-file`` is the local SuperLink's (Flower's home folder), owned by this
user, and stops only it (``fedrouter stop``). Linux and other systems with
``/proc``; elsewhere it says so.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from pathlib import Path

from fedrouter_app.compat.flwr_internals import local_superlink_log

PROC = Path("/proc")


def local_superlink_pids(log_file: Path | None = None, proc: Path = PROC) -> list[int]:
    """PIDs of this user's processes running ``flower-superlink`` with the local SuperLink's log file."""
    wanted = str(log_file or local_superlink_log())
    found = []
    for entry in proc.glob("[0-9]*"):
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        runs_superlink = any(Path(a).name == "flower-superlink" for a in args)
        logs_here = any(a == "--log-file" and b == wanted for a, b in itertools.pairwise(args))
        if runs_superlink and logs_here:
            found.append(int(entry.name))
    return sorted(found)


def stop_local_superlink(timeout: float = 10.0, proc: Path = PROC) -> str:
    """Stop the local SuperLink (SIGTERM, then SIGKILL after ``timeout`` seconds); a line saying what was done."""
    if not proc.is_dir():
        return (
            f"cannot look for the local SuperLink here (no {proc}); stop the process logging to {local_superlink_log()}"
        )
    pids = local_superlink_pids(proc=proc)
    if not pids:
        return "no local SuperLink is running"
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    return f"stopped the local SuperLink (pid {', '.join(map(str, pids))})"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of ours that ended stays a zombie until reaped: it no longer runs.
    try:
        return (PROC / str(pid) / "stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
