"""The ``flwr run`` command that reproduces a run, for the runtime it ran on.

The ServerApp does not see the command line of ``flwr run``; it sees the run
config and the runtime. On the simulation runtime the command names no
SuperLink connection and gives the federation's size; on the deployment
runtime it names the connection, in the local Flower configuration
(``$FLWR_HOME/config.toml``, default ``~/.flwr/config.toml``), whose address is
the SuperLink the run came from. Where none is found (the command was run on
another machine), the connection is written as ``<connection to HOST:PORT>``
to be replaced by its name there.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SIMULATION = "simulation"
DEPLOYMENT = "deployment"
_LOOPBACK = {"127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]", "::", "[::]"}


def runtime_of(grid: Any) -> str:
    """``deployment`` on a SuperLink's HTTP grid, ``simulation`` otherwise (in-memory and in-process grids)."""
    from fedrouter_app.compat.flwr_helpers import is_http_grid

    return DEPLOYMENT if is_http_grid(grid) else SIMULATION


def run_config_string(overrides: Sequence[str]) -> str:
    """The ``--run-config`` value that gives these Hydra overrides (``method``/``scenario`` as their own keys)."""
    groups = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("method", "scenario")}
    rest = shlex.join(o for o in overrides if o.split("=", 1)[0] not in groups)
    # TOML values: a literal 'string' where it can be one, else a basic "string".
    value = f"'{rest}'" if "'" not in rest else json.dumps(rest)
    return " ".join([f"{k}='{v}'" for k, v in groups.items()] + ([f"overrides={value}"] if rest else []))


def shell_quoted(text: str) -> str:
    """``text`` as one shell word, in double quotes where that needs no escapes (as the docs write it)."""
    if text and not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def reproduce_command(overrides: Sequence[str], runtime: str, num_clients: int) -> str:
    """The ``flwr run`` command for these overrides on ``runtime``."""
    run_config = run_config_string(overrides)
    config_arg = f" --run-config {shell_quoted(run_config)}" if run_config else ""
    if runtime == SIMULATION:
        return f'flwr run . --stream{config_arg} --federation-config "num-supernodes={num_clients}"'
    return f"flwr run . {shlex.quote(connection_name(superlink_address()))} --stream{config_arg}"


def superlink_address() -> str:
    """The SuperLink address this ServerApp process was given (``flwr-serverapp --runtime-api-address``)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--runtime-api-address" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--runtime-api-address="):
            return arg.split("=", 1)[1]
    return ""


def connection_name(address: str, config_path: Path | None = None) -> str:
    """The name of the connection in the Flower configuration whose address is ``address``."""
    path = config_path or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr") / "config.toml"
    try:
        connections = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError):
        connections = {}
    for name, entry in connections.items():
        if isinstance(entry, dict) and address and _same_address(str(entry.get("address", "")), address):
            return name
    return f"<connection to {address or 'the SuperLink'}>"


def _same_address(a: str, b: str) -> bool:
    host_a, _, port_a = a.rpartition(":")
    host_b, _, port_b = b.rpartition(":")
    if not port_a or port_a != port_b:
        return False
    return host_a == host_b or (host_a in _LOOPBACK and host_b in _LOOPBACK)
