"""Message polling of Flower's simulation runtime, at a cost that does not grow with the federation.

Flower 1.41's simulation runtime moves instructions from its in-memory link
state to the actors with a thread that, every 0.1 s, asks the state for each
registered node's next message; each ask scans every stored message. With N
virtual clients and M messages in flight that is N x M checks ten times a
second, under the lock that replies need too: 500 clients and a 50-client
round keep most of a core busy doing nothing, and the 500 registrations of a
first round take minutes.

:func:`pending_nodes_only` swaps that thread's function, for the duration of a
block, for one that first collects the nodes that have an undelivered message
(one pass over the store) and asks only for those: each message is still
handed out by the state's own ``get_message_ins``, with its checks and its
delivery mark. States other than the in-memory one keep Flower's polling.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Queue

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState

POLL_INTERVAL_S = 0.02  # Flower polls every 0.1 s; a pass over the store is cheap, and each exchange waits for one


def pending_nodes(state: InMemoryLinkState) -> set[int]:
    """Nodes with a message not yet delivered, in one pass over the state's store."""
    with state.lock:
        return {m.metadata.dst_node_id for m in state.message_ins_store.values() if m.metadata.delivered_at == ""}


def add_pending_messages_to_queue(
    state: LinkState, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Flower's ``add_messages_to_queue``, asking only nodes that have a message waiting."""
    if not isinstance(state, InMemoryLinkState):
        _flower_add_messages_to_queue(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        for node_id in pending_nodes(state) & nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(POLL_INTERVAL_S)


_flower_add_messages_to_queue = vce_api.add_messages_to_queue


@contextmanager
def pending_nodes_only() -> Iterator[None]:
    """Simulations started inside this block poll with :func:`add_pending_messages_to_queue`."""
    vce_api.add_messages_to_queue = add_pending_messages_to_queue
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = _flower_add_messages_to_queue
