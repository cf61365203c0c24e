"""Loggers that go wherever Flower's logs go.

Our loggers are children of Flower's ``flwr`` logger, so their lines reach the
console, ``flwr run --stream`` and ``flwr log`` the same way Flower's own do,
in every runtime, with no handler setup of ours.
"""

from __future__ import annotations

import logging


def get_logger(module: str) -> logging.Logger:
    """Logger for ``module`` (pass ``__name__``)."""
    return logging.getLogger(f"flwr.fedrouter.{module}")
