"""Message delivery in Flower's simulation runtime, at a cost that does not grow with the federation.

Flower 1.41's simulation runtime moves instructions from its in-memory link
state to the actors with a thread that, every 0.1 s, asks the state for each
registered node's next message, and each ask scans every stored message. With
N virtual clients and M messages stored that is N x M checks ten times a
second, under the lock that replies need too: a 500-client federation kept
most of a core busy doing nothing, and 10,000 registrations never finished.

:class:`DeliveryIndex` answers those asks from an index of every node's
undelivered messages, rebuilt in one pass over the store only when the store
has changed (and at most every :data:`REFRESH_S`); each message is still
checked by the state's own expiry check and marked delivered as Flower does.
Two ways in:

- :func:`indexed_delivery` (in-process simulations, :mod:`fedrouter_app.runners.simulation`)
  swaps the polling thread's function, for the duration of a block, for one
  that takes every node's next message from the index at once, so the
  thread's cost no longer depends on N either;
- :func:`index_grid_deliveries` (called by the ServerApp on any runtime) makes
  the index answer ``get_message_ins`` of the state behind a simulation's
  grid, so a simulation that ``flwr run`` starts in its own process, whose
  polling thread is Flower's and may already be running, asks the index too.

States other than the in-memory one (a SuperLink's database) are left alone.
The Flower internals involved are behind :mod:`fedrouter_app.compat.flwr_internals`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Container, Iterator
from contextlib import contextmanager
from queue import Queue
from typing import TYPE_CHECKING

from flwr.app import Message

from fedrouter_app.compat.flwr_internals import (
    deliver,
    flower_message_poller,
    grid_state,
    is_in_memory_state,
    polling_with,
    serve_message_ins_with,
    state_lock,
    store_signature,
    undelivered_by_node,
)

if TYPE_CHECKING:
    from fedrouter_app.compat.flwr_internals import LinkState

POLL_INTERVAL_S = 0.02  # Flower polls every 0.1 s; a pass is cheap, and each exchange waits for one
# A message stored since the last rebuild waits at most this long (Flower's own poll interval is 0.1 s).
REFRESH_S = 0.02


class DeliveryIndex:
    """Each node's undelivered instructions in an in-memory link state, oldest first.

    Parameters
    ----------
    state : LinkState
        Flower's in-memory link state.
    """

    def __init__(self, state: LinkState) -> None:
        self.state = state
        self.waiting: dict[int, deque[str]] = {}
        self._signature: tuple[int, str | None] | None = None
        self._refreshed = -float("inf")

    def _current(self) -> None:
        signature = store_signature(self.state)
        now = time.monotonic()
        if signature != self._signature and now - self._refreshed >= REFRESH_S:
            self.waiting = {node: deque(ids) for node, ids in undelivered_by_node(self.state).items()}
            self._signature, self._refreshed = signature, now

    def _next(self, node_id: int) -> Message | None:
        queued = self.waiting.get(node_id)
        while queued:
            if (message := deliver(self.state, queued.popleft())) is not None:
                return message
        self.waiting.pop(node_id, None)
        return None

    def take(self, node_id: int) -> list[Message]:
        """``node_id``'s next undelivered instruction (as a list of at most one), marked delivered."""
        with state_lock(self.state):
            self._current()
            message = self._next(node_id)
        return [] if message is None else [message]

    def take_all(self, nodes: Container[int]) -> list[Message]:
        """The next undelivered instruction of every node in ``nodes`` that has one, marked delivered."""
        with state_lock(self.state):
            self._current()
            taken = [self._next(node) for node in list(self.waiting) if node in nodes]
        return [message for message in taken if message is not None]


def add_indexed_messages_to_queue(
    state: LinkState, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Flower's ``add_messages_to_queue``, taking each node's next message from a :class:`DeliveryIndex`."""
    if not is_in_memory_state(state):
        flower_message_poller()(state, queue, nodes_mapping, f_stop)
        return
    index = DeliveryIndex(state)
    while not f_stop.is_set():
        for message in index.take_all(nodes_mapping):
            queue.put(message)
        f_stop.wait(POLL_INTERVAL_S)


@contextmanager
def indexed_delivery() -> Iterator[None]:
    """Simulations started inside this block poll with :func:`add_indexed_messages_to_queue`."""
    with polling_with(add_indexed_messages_to_queue):
        yield


def index_grid_deliveries(grid: object) -> bool:
    """Make a :class:`DeliveryIndex` answer ``get_message_ins`` of the state behind a simulation's grid.

    Returns whether it did: only Flower's in-memory grid has such a state. The
    index answers what Flower's polling thread asks (one node, one message);
    any other ask goes to the state's own method.
    """
    state = grid_state(grid)
    if state is None:
        return False
    index = DeliveryIndex(state)

    def get_message_ins(node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
        if limit != 1 or run_id is not None:
            return original(node_id=node_id, limit=limit, run_id=run_id)
        return index.take(node_id)

    original = serve_message_ins_with(state, get_message_ins)
    return True
