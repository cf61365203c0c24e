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
The Flower internals involved are behind :mod:`fedrouter_app.compat.flwr_internals`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Queue
from typing import TYPE_CHECKING

from flwr.app import Message

from fedrouter_app.compat.flwr_internals import (
    flower_message_poller,
    is_in_memory_state,
    polling_with,
    undelivered_destinations,
)

if TYPE_CHECKING:
    from fedrouter_app.compat.flwr_internals import LinkState

POLL_INTERVAL_S = 0.02  # Flower polls every 0.1 s; a pass over the store is cheap, and each exchange waits for one


def add_pending_messages_to_queue(
    state: LinkState, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Flower's ``add_messages_to_queue``, asking only nodes that have a message waiting."""
    if not is_in_memory_state(state):
        flower_message_poller()(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        for node_id in undelivered_destinations(state) & nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(POLL_INTERVAL_S)


@contextmanager
def pending_nodes_only() -> Iterator[None]:
    """Simulations started inside this block poll with :func:`add_pending_messages_to_queue`."""
    with polling_with(add_pending_messages_to_queue):
        yield
