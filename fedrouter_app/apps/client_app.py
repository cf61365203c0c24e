"""The ClientApp: a thin front that hands each message to whoever does the node's work.

Imported by every ClientApp process Flower starts (on the deployment runtime,
one per message), so it imports nothing heavy: no torch, transformers or peft
(``python -X importtime -c "import fedrouter_app.apps.client_app"``).

- Where the node's config names a warm worker (``--node-config
  "worker='/path/node0.sock'"``), the message and the node's context travel to
  it over a local authenticated channel, and its reply and the node's new
  state come back (:mod:`fedrouter_app.runtime.worker_client`). A worker that is not
  running is started; one that dies is replaced and the message sent again.
- Otherwise (and in simulation) this process does the work itself, as the
  worker would (:mod:`fedrouter_app.client.client_handler`, imported on first use).

Either way the message meets the same handler, so a node with and without a
worker gives the same replies, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrouter_app.client.client_logs import client_label, in_deployment_clientapp, label_client_logs
from fedrouter_app.compat.flwr_helpers import ClientAppCallable, Mod, make_ffn, validate_message_type
from fedrouter_app.federation.client_errors import failure_reply
from fedrouter_app.federation.client_mods import dp_clipping_mod
from fedrouter_app.logs import get_logger
from fedrouter_app.runtime.message_timing import record_timing
from fedrouter_app.runtime.node_threads import apply_cpus, node_cpus
from fedrouter_app.runtime.worker_channel import WorkerAddress
from fedrouter_app.runtime.worker_client import CodeMismatchError, forward

log = get_logger(__name__)
# When this module started to load: the per-message timings count the imports from here.
_IMPORTED_AT = time.time()
_IMPORT_SECONDS = 0.0
_warned_mismatch: set[str] = set()


class ForwardingClientApp(ClientApp):
    """A ClientApp that sends every valid message type to one handler (wrapped in the app's mods).

    Flower's ClientApp dispatches on handlers registered per message type; the
    message types a method adds are only known to the method's code, which
    this light front does not import, so one handler takes them all and the
    method refuses what it does not handle.
    """

    def __init__(self, handler: ClientAppCallable, mods: list[Mod] | None = None) -> None:
        super().__init__(mods=mods)
        # Flower's own way of wrapping mods around a handler.
        self._handler = make_ffn(handler, list(mods or []))

    def __call__(self, message: Message, context: Context) -> Message:
        if not validate_message_type(message.metadata.message_type):
            raise ValueError(f"Invalid message type: {message.metadata.message_type}")
        return self._handler(message, context)


def handle(msg: Message, context: Context, overrides: Sequence[str] = ()) -> Message:
    """Do ``msg``'s work here or on the node's worker; ``context.state`` is updated in place."""
    started = time.time()
    cpus = node_cpus(context.node_config)
    address = WorkerAddress.from_node_config(context.node_config)
    timing: dict[str, float] = {}
    reply: Message | None = None
    if address is not None:
        try:
            result = forward(address, msg, context, overrides, cpus)
        except CodeMismatchError as err:
            if str(address.socket) not in _warned_mismatch:
                _warned_mismatch.add(str(address.socket))
                log.warning("%s; doing the work in the ClientApp process (restart that worker to use it)", err)
        else:
            context.state.clear()
            context.state.update(result.state)
            reply = Message(result.content, reply_to=msg)
            timing = {"worker": 1.0, **{f"worker_{k}": v for k, v in result.timing.items()}}
    if reply is None:
        apply_cpus(cpus)
        before = time.perf_counter()
        from fedrouter_app.client.client_handler import handle_message

        imported = time.perf_counter()
        reply = handle_message(msg, context, overrides)
        timing = {"worker": 0.0, "handler_import": imported - before, "work": time.perf_counter() - imported}
    record_timing(msg, context, {"imports": _IMPORT_SECONDS, "started": started, **timing}, _IMPORTED_AT)
    return reply


def handle_or_fail(msg: Message, context: Context, overrides: Sequence[str] = ()) -> Message:
    """:func:`handle`, or where it raises, an error reply whose reason holds none of the node's paths or data.

    The node logs the whole error; the server learns what kind of failure it
    was (:mod:`fedrouter_app.federation.client_errors`).
    """
    try:
        return handle(msg, context, overrides)
    except Exception as err:
        return failure_reply(msg, err)


def make_client_app(overrides: Sequence[str] = ()) -> ClientApp:
    """A ClientApp that adds ``overrides`` to whatever the run config says."""

    def handler(msg: Message, context: Context) -> Message:
        if not in_deployment_clientapp():
            return handle_or_fail(msg, context, overrides)
        label_client_logs()
        with client_label(context.run_id, context.node_config.get("partition-id", "?")):
            return handle_or_fail(msg, context, overrides)

    # Flower's fixedclipping_mod for dp.mode=client; a no-op unless the server sends a clipping norm.
    return ForwardingClientApp(handler, mods=[dp_clipping_mod])


app = make_client_app()
_IMPORT_SECONDS = time.time() - _IMPORTED_AT
