"""What a node tells the server when it fails a message: a general reason, never its paths or data.

Flower sends the server a ClientApp's exception as it is, message and all; a
node's errors often name its own files (a malformed data file) or quote its
data. The ClientApp instead logs the whole error on the node, in one line,
and replies with a reason that says only what kind of failure it was, e.g.
``the node's data could not be read (DataError)``. An error raised as a
:class:`ServerVisibleError` goes to the server as it is: its message holds
nothing but what the server sent or needs to fix (a configuration mismatch).

Light (no torch): imported by the ClientApp front and the node's worker.
"""

from __future__ import annotations

from flwr.app import Error, Message

from fedrouter_app.compat.flwr_helpers import ErrorCode
from fedrouter_app.logs import get_logger

log = get_logger(__name__)

# The reason a node's worker worked out for an error, kept on the error the ClientApp raises again from it.
PUBLIC_REASON = "fedrouter_public_reason"

# General reasons by the class of the error (or of one of its bases), first match wins. Named, not imported:
# the classes live in modules this light one does not load, and a worker's error comes back under its name only.
_KINDS = (
    ("DataError", "the node's data could not be read"),
    ("ConfigError", "the node could not use the run's configuration"),
    ("ChannelError", "the node's worker could not be reached"),
    ("OutOfMemoryError", "the node ran out of memory"),
    ("MemoryError", "the node ran out of memory"),
    ("OSError", "the node could not read or write a file"),
)
# Errors a node's operator needs the line of; the server gets the general reason only.
_EXPECTED = ("ServerVisibleError", "DataError", "ConfigError", "ChannelError")


class ServerVisibleError(ValueError):
    """A node's refusal whose message names nothing of the node's own: the server receives it as it is."""


def public_reason(err: BaseException) -> str:
    """What the server may learn of ``err``: its kind and class name, not its message (see the module's notes)."""
    given = getattr(err, PUBLIC_REASON, None)
    if isinstance(given, str) and given:
        return given
    name = type(err).__name__
    bases = {cls.__name__ for cls in type(err).__mro__}
    if "ServerVisibleError" in bases:
        return " ".join(str(err).split())
    general = next((text for kind, text in _KINDS if kind in bases), "the node failed to handle the message")
    return f"{general} ({name})"


def failure_reply(msg: Message, err: Exception) -> Message:
    """Log ``err`` in full on the node (one line) and return the error reply the server receives."""
    reason = public_reason(err)
    line = " ".join(str(err).split())
    if {cls.__name__ for cls in type(err).__mro__} & set(_EXPECTED):
        log.error("%s failed: %s: %s", msg.metadata.message_type, type(err).__name__, line)
    else:
        # Not a failure the app foresees: the traceback stays on the node, for whoever runs it.
        log.error("%s failed: %s: %s", msg.metadata.message_type, type(err).__name__, line, exc_info=err)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
