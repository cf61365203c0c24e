"""In-process simulation on Ray, for tests, notebooks and the sweep launcher.

``flwr run .`` is the supported way to run the app; this wraps Flower's
``run_simulation`` (deprecated upstream, kept behind this one function) so that
a caller in Python gets the run directory back and can pass any Hydra
override, lists included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from flwr.simulation import run_simulation

from fedrouter_app.client_app import make_client_app
from fedrouter_app.config import load_run_config
from fedrouter_app.server_app import make_server_app


def simulate(overrides: Sequence[str] = (), *, num_cpus: int | None = None, cpus_per_client: int = 1) -> Path:
    """Run one job in-process on Ray and return its run directory.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, e.g. ``["method=local", "num_rounds=2"]``.
    num_cpus : int, optional
        CPUs Ray may use (default: all).
    cpus_per_client : int
        CPUs per virtual client; concurrency is ``num_cpus // cpus_per_client``.
    """
    cfg = load_run_config(overrides)
    finished: list[Path] = []
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=make_server_app(overrides, on_finish=finished.append),
        client_app=make_client_app(overrides),
        num_supernodes=cfg.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": num_cpus or os.cpu_count() or 1,
                "include_dashboard": False,
                "logging_level": "ERROR",
                "log_to_driver": False,
            },
        },
    )
    if not finished:
        raise RuntimeError("the simulation ended without completing the run; see the log above")
    return finished[0]
