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

The actors outlive the call: the next ``simulate`` in this process with the
same backend settings reuses them, base model loaded and all
(:mod:`fedrouter_app.runners.actor_pool`); ``keep_actors=False`` stops them at the end.
Flower's runtime polls for messages only on nodes that have one waiting
(:mod:`fedrouter_app.runtime.message_poll`), so a round's overhead does not grow with
the number of virtual clients.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from fedrouter_app.apps.client_app import make_client_app
from fedrouter_app.apps.server_app import make_server_app
from fedrouter_app.config.compose import load_run_config
from fedrouter_app.runners.actor_pool import keeping_actors, release_actors
from fedrouter_app.runtime.message_poll import indexed_delivery

# "auto" (find the local cluster), "local" (start a new one), "host:port" (GCS
# address, as `ray start --head` prints it) or "ray://host:port" (Ray Client).
_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9.\-_\[\]:]+:\d{1,5})$")


def backend_config(
    num_cpus: int | None = None,
    cpus_per_client: float = 1,
    ray_address: str | None = None,
    gpus_per_client: float = 0.0,
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
    gpus_per_client : float
        GPUs per virtual client (Ray actor): a fraction shares one GPU, e.g.
        0.25 runs four actors, each with its own copy of the base model, on
        each GPU. 0 gives the actors no GPU reservation.

    Raises
    ------
    ValueError
        On a malformed address, ``num_cpus`` given together with an address,
        non-positive CPU counts, or a negative or fractional-above-one GPU share.
    """
    if cpus_per_client <= 0:
        raise ValueError(f"cpus_per_client must be positive, got {cpus_per_client}")
    # Ray accepts a share of one GPU or a whole number of GPUs, nothing between.
    if gpus_per_client < 0 or (gpus_per_client > 1 and not float(gpus_per_client).is_integer()):
        raise ValueError(f"gpus_per_client must be in [0, 1] or a whole number, got {gpus_per_client}")
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
        # A new instance even when `ray start` left a cluster on this machine (Ray would join it otherwise).
        init_args["address"] = "local"
    resources = {"num_cpus": cpus_per_client, "num_gpus": float(gpus_per_client)}
    return {"client_resources": resources, "init_args": init_args}


def default_gpus_per_client() -> float:
    """``$FEDROUTER_GPUS_PER_CLIENT`` (e.g. 0.25 for a sweep on one GPU), else 0."""
    value = os.environ.get("FEDROUTER_GPUS_PER_CLIENT", "").strip()
    try:
        return float(value) if value else 0.0
    except ValueError:
        raise ValueError(f"FEDROUTER_GPUS_PER_CLIENT must be a number, got {value!r}") from None


def simulate(
    overrides: Sequence[str] = (),
    *,
    num_cpus: int | None = None,
    cpus_per_client: float = 1,
    ray_address: str | None = None,
    gpus_per_client: float | None = None,
    keep_actors: bool = True,
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
    gpus_per_client : float, optional
        GPU share per virtual client (see :func:`backend_config`); default
        ``$FEDROUTER_GPUS_PER_CLIENT`` or 0. Concurrency is then also bounded
        by ``GPUs // gpus_per_client``.
    keep_actors : bool
        Leave the Ray actors (each holding a base model) and Ray running for
        the next call in this process, which reuses them when its backend
        settings are the same; :func:`fedrouter_app.runners.actor_pool.release_actors`
        or the end of the process stops them. False: stop them at the end.
    """
    gpus = default_gpus_per_client() if gpus_per_client is None else gpus_per_client
    # Honour Ray's own variable here too, so that num_cpus is not passed to a cluster that has its own.
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    config = backend_config(num_cpus, cpus_per_client, address, gpus_per_client=gpus)
    cfg = load_run_config(overrides)
    finished: list[Path] = []
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with keeping_actors(), indexed_delivery():
        run_simulation(
            server_app=make_server_app(overrides, on_finish=finished.append),
            client_app=make_client_app(overrides),
            num_supernodes=cfg.num_clients,
            backend_config=config,
        )
    if not keep_actors:
        release_actors()
    if not finished:
        raise RuntimeError("the simulation ended without completing the run; see the log above")
    return finished[0]
