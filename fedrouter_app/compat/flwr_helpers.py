"""Flower functions fedrouter calls that are not in Flower's public API (``flwr.app``, ``flwr.serverapp``, ...).

Light, unlike :mod:`fedrouter_app.compat.flwr_internals` (which reaches into
the simulation runtime and Ray): the ClientApp shim and the warm worker import
this module. What is used, and by whom:

- message, context and record serialization (``flwr.common.serde``, the
  ``flwr.proto`` classes): the worker channel sends Flower's own protobuf
  encoding, never pickles;
- the DP helpers behind Flower's own DP wrappers (``flwr.supercore.differential_privacy``):
  the clipping-norm key, an update's norm, the Gaussian noise's std;
- the legacy strategies' aggregation functions (``flwr.server.strategy.aggregate``):
  Krum, median and trimmed mean, reused rather than rewritten;
- the error code of a ClientApp that raised (``flwr.common.constant.ErrorCode``);
- the ClientApp's mod plumbing (``make_ffn``, ``validate_message_type``, the
  ``ClientAppCallable`` and ``Mod`` types) for a ClientApp that forwards to a worker;
- Flower's console log handler, which client logs extend;
- the HTTP grid's class (a run on a SuperLink) and the CLI's SuperLink
  connection writer, imported only when called: they pull in more of Flower.

Importing this module checks the installed flwr against
:data:`~fedrouter_app.compat.flwr_internals.TESTED_FLWR` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrouter_app.compat.versions import require_tested_version

TESTED_FLWR = ">=1.41,<1.42"  # the same range as flwr_internals (tests/fedrouter_app/compat check they agree)
FLWR_VERSION = require_tested_version(
    "flwr", TESTED_FLWR, "calls Flower helpers outside its public API", "flwr==1.41.*"
)

from flwr.app.metadata import validate_message_type  # noqa: E402
from flwr.client.mod.utils import make_ffn  # noqa: E402
from flwr.clientapp.typing import ClientAppCallable, Mod  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.common.serde import (  # noqa: E402
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext  # noqa: E402  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # noqa: E402  # pylint: disable=E0611
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # noqa: E402  # pylint: disable=E0611
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg  # noqa: E402
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_stdv, get_norm  # noqa: E402
from flwr.supercore.logger import console_handler, update_console_handler  # noqa: E402

__all__ = [
    "FLWR_VERSION",
    "KEY_CLIPPING_NORM",
    "TESTED_FLWR",
    "ClientAppCallable",
    "ErrorCode",
    "Mod",
    "ProtoContext",
    "ProtoMessage",
    "ProtoRecordDict",
    "aggregate_krum",
    "aggregate_median",
    "aggregate_trimmed_avg",
    "compute_stdv",
    "console_handler",
    "context_from_proto",
    "context_to_proto",
    "get_norm",
    "is_http_grid",
    "make_ffn",
    "message_from_proto",
    "message_to_proto",
    "recorddict_from_proto",
    "recorddict_to_proto",
    "update_console_handler",
    "validate_message_type",
    "write_superlink_connection",
]


def is_http_grid(grid: Any) -> bool:
    """Whether ``grid`` is the SuperLink's HTTP grid, i.e. the run is a deployment."""
    from flwr.superlink.grid.http_grid import HttpGrid

    return isinstance(grid, HttpGrid)


def write_superlink_connection(name: str, address: str, insecure: bool | None, root_certificates: str | None) -> Path:
    """Write ``[superlink.<name>]`` into Flower's configuration, as ``flwr`` does; return the file's path."""
    from flwr.cli.flower_config import write_superlink_connection as write
    from flwr.cli.typing import SuperLinkConnection
    from flwr.supercore.utils import get_flwr_home

    write(SuperLinkConnection(name=name, address=address, root_certificates=root_certificates, insecure=insecure))
    return get_flwr_home() / "config.toml"
