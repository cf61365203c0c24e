"""In-process simulation on Ray, for tests, notebooks, sweeps and benchmarks.

``flwr run .`` is the supported way to run the app; this wraps Flower's
``run_simulation`` (deprecated upstream, kept behind this one function) so that
a caller in Python gets the run directory back and can pass any Hydra
override, lists included.

By default Ray starts on this machine. Given ``ray_address`` (or the
``RAY_ADDRESS`` environment variable Ray itself reads), the virtual clients run
as actors on an existing Ray cluster instead, e.g. one started with
``ray start --head`` on one machine and ``ray start --address=<head>:6379`` on
the others: the ServerApp stays in this process, and each worker machine holds
one base model per actor, never one per client.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from fedrouter_app.client_app import make_client_app
from fedrouter_app.config import load_run_config
from fedrouter_app.server_app import make_server_app

# "auto" (find the local cluster), "local" (start a new one), "host:port" (GCS
# address, as `ray start --head` prints it) or "ray://host:port" (Ray Client).
_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9.\-_\[\]:]+:\d{1,5})$")


def backend_config(
    num_cpus: int | None = None, cpus_per_client: float = 1, ray_address: str | None = None
) -> dict[str, Any]:
    """The Ray backend config of a simulation.

    Parameters
    ----------
    num_cpus : int, optional
        CPUs a new local Ray instance may use (default: all of this machine's).
        Must be left out with ``ray_address``: an existing cluster has its own.
    cpus_per_client : float
        CPUs per virtual client; each Ray node runs ``its CPUs // cpus_per_client``
        actors, each holding one base model.
    ray_address : str, optional
        Address of an existing Ray cluster: ``auto``, ``host:port`` or
        ``ray://host:port``.

    Raises
    ------
    ValueError
        On a malformed address, ``num_cpus`` given together with an address, or
        non-positive CPU counts.
    """
    if cpus_per_client <= 0:
        raise ValueError(f"cpus_per_client must be positive, got {cpus_per_client}")
    init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if ray_address is not None:
        if not _ADDRESS.match(ray_address):
            raise ValueError(f"invalid Ray address {ray_address!r}; expected 'auto', 'host:port' or 'ray://host:port'")
        if num_cpus is not None:
            raise ValueError("num_cpus cannot be set with ray_address: an existing Ray cluster has its own CPUs")
        init_args["address"] = ray_address
    else:
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        init_args["num_cpus"] = num_cpus or os.cpu_count() or 1
    return {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}, "init_args": init_args}


def simulate(
    overrides: Sequence[str] = (),
    *,
    num_cpus: int | None = None,
    cpus_per_client: float = 1,
    ray_address: str | None = None,
) -> Path:
    """Run one job in-process on Ray and return its run directory.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, e.g. ``["method=local", "num_rounds=2"]``.
    num_cpus : int, optional
        CPUs a local Ray may use (default: all); not with ``ray_address``.
    cpus_per_client : float
        CPUs per virtual client; concurrency is ``num_cpus // cpus_per_client``.
    ray_address : str, optional
        Run the clients on this existing Ray cluster (see :func:`backend_config`);
        default: ``$RAY_ADDRESS`` when set, else a new local Ray instance.
    """
    # Honour Ray's own variable here too, so that num_cpus is not passed to a cluster that has its own.
    config = backend_config(num_cpus, cpus_per_client, ray_address or os.environ.get("RAY_ADDRESS") or None)
    cfg = load_run_config(overrides)
    finished: list[Path] = []
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=make_server_app(overrides, on_finish=finished.append),
        client_app=make_client_app(overrides),
        num_supernodes=cfg.num_clients,
        backend_config=config,
    )
    if not finished:
        raise RuntimeError("the simulation ended without completing the run; see the log above")
    return finished[0]
