"""How many threads torch may use in a process that does a node's work.

Several SuperNodes (and their workers) often share one machine; each process
taking every core makes them fight over the cores. A node says how many CPUs
it has with ``--node-config "num-cpus=N"``; a worker with ``--cpus N``.
Without either, torch keeps its own choice (every core), or its launcher's
(Ray sets ``OMP_NUM_THREADS`` for its actors).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

NODE_CPUS = "num-cpus"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def node_cpus(node_config: Mapping[str, Any]) -> int | None:
    """The node's ``num-cpus``, checked; None when not given."""
    value = node_config.get(NODE_CPUS)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1 or value != int(value):
        raise ValueError(f"node config {NODE_CPUS} must be a whole number >= 1, got {value!r}")
    return int(value)


def apply_cpus(cpus: int | None) -> None:
    """Give torch ``cpus`` threads; None leaves torch's own choice (or its launcher's, e.g. Ray's).

    Works before torch is imported (through the variables torch reads at
    import) and after (``torch.set_num_threads``).
    """
    if cpus is None:
        return
    for var in _THREAD_VARS:
        os.environ[var] = str(cpus)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)
