"""Where a ClientApp process's time goes, one JSON line per message (for the deployment benchmark).

Written only when ``FEDROUTER_TIMING_LOG`` names a file (set it in the
environment of the SuperNodes): the line says when the process started, how
long its imports took, whether a worker did the work and how long the work
and the channel took. Lines are appended with one ``write`` each, so the
processes of one machine can share the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flwr.app import Context, Message

TIMING_LOG = "FEDROUTER_TIMING_LOG"


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from ``/proc``; None where there is none."""
    try:
        stat = Path("/proc/self/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration):
        return None
    # Field 22 (starttime, in clock ticks since boot) counts from after the command name's closing parenthesis.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


def record_timing(msg: Message, context: Context, timing: dict[str, float], imported_at: float) -> None:
    """Append one line for ``msg`` to ``$FEDROUTER_TIMING_LOG``, if set."""
    path = os.environ.get(TIMING_LOG)
    if not path:
        return
    line = {
        "pid": os.getpid(),
        "client": context.node_config.get("partition-id"),
        "run": context.run_id,
        "type": msg.metadata.message_type,
        "round": _server_round(msg),
        # Flower moves every array of a message as an object of its own: the count drives the transfer time.
        "arrays": sum(len(record) for record in msg.content.array_records.values()) if msg.has_content() else 0,
        "process_start": process_start_time(),
        "imported_at": imported_at,
        "finished": time.time(),
        **timing,
    }
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def _server_round(msg: Message) -> int | None:
    config = msg.content.config_records.get("config") if msg.has_content() else None
    value = config.get("server-round") if config is not None else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
