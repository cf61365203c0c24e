"""Client-side log lines that say when and for whom: a timestamp, the run and the client on every line.

On the deployment runtime a ClientApp's lines go to its SuperNode's output and
a worker's to its own; several runs and clients may pass through one node.
:func:`label_client_logs` turns on Flower's timestamps and prefixes every line
logged while a message is handled with ``[run R client C]``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from fedrouter_app.compat.flwr_helpers import console_handler, update_console_handler

_current: ContextVar[str] = ContextVar("fedrouter_client_label", default="")


class ClientLabel(logging.Filter):
    """Prefixes a record's message with the label of the message being handled, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = _current.get()
        if label and not getattr(record, "_fedrouter_labelled", False):
            record.msg = f"{label} {record.msg}"
            record._fedrouter_labelled = True
        return True


_installed = False


def label_client_logs() -> None:
    """Timestamps on Flower's console lines and the client label on lines logged while handling (idempotent)."""
    global _installed
    if _installed:
        return
    update_console_handler(timestamps=True)
    console_handler.addFilter(ClientLabel())
    _installed = True


def in_deployment_clientapp() -> bool:
    """True in a ``flwr-clientapp`` process (the deployment runtime), not in a simulation's actors."""
    return Path(sys.argv[0]).name == "flwr-clientapp" if sys.argv else False


@contextmanager
def client_label(run_id: int, client: object) -> Iterator[None]:
    """Label the lines logged inside the block ``[run <run_id> client <client>]``."""
    token = _current.set(f"[run {run_id} client {client}]")
    try:
        yield
    finally:
        _current.reset(token)
