"""Flower mods the ClientApp carries; light (no torch), so the ClientApp shim can carry them too."""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod

from fedrouter_app.compat.flwr_helpers import KEY_CLIPPING_NORM, ClientAppCallable

# The key of the config record every instruction carries (fedrouter_app.federation.records.CONFIG).
CONFIG = "config"


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` on training instructions that carry a clipping norm; others pass through.

    The server adds the norm only with ``dp.mode=client``, so the ClientApp can
    always carry this mod.
    """
    config = msg.content.config_records.get(CONFIG)
    if msg.metadata.message_type == MessageType.TRAIN and config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
