"""The simulation runtime's message polling asks only nodes that have a message waiting."""

import threading
from queue import Queue
from types import SimpleNamespace

from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager

from fedrouter_app.compat.flwr_internals import undelivered_destinations
from fedrouter_app.message_poll import add_pending_messages_to_queue, pending_nodes_only


def in_memory_state():
    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()


def message(node: int, delivered: bool = False) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at="then" if delivered else ""))


def test_pending_nodes_are_those_with_an_undelivered_message():
    state = in_memory_state()
    state.message_ins_store.update({"a": message(7), "b": message(8, delivered=True), "c": message(7), "d": message(9)})
    assert undelivered_destinations(state) == {7, 9}


def test_only_pending_nodes_are_asked_and_each_message_is_queued_once(monkeypatch):
    state = in_memory_state()
    nodes = {node: node for node in range(500)}
    state.message_ins_store.update({f"m{n}": message(n) for n in (3, 250, 499)})
    state.message_ins_store["other-run"] = message(10_000)  # a node this runtime does not serve
    asked: list[int] = []
    stop = threading.Event()

    def get_message_ins(node_id: int, limit: int) -> list:
        asked.append(node_id)
        found = [m for m in state.message_ins_store.values() if m.metadata.dst_node_id == node_id][:limit]
        for m in found:
            m.metadata.delivered_at = "now"
        if not undelivered_destinations(state) & nodes.keys():
            stop.set()
        return found

    monkeypatch.setattr(state, "get_message_ins", get_message_ins)
    queue: Queue = Queue()
    thread = threading.Thread(target=add_pending_messages_to_queue, args=(state, queue, nodes, stop))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert sorted(asked) == [3, 250, 499]
    assert sorted(queue.get_nowait().metadata.dst_node_id for _ in range(3)) == [3, 250, 499]
    assert queue.empty()


def test_flower_polling_is_swapped_only_inside_the_block():
    flower = vce_api.add_messages_to_queue
    with pending_nodes_only():
        assert vce_api.add_messages_to_queue is add_pending_messages_to_queue
    assert vce_api.add_messages_to_queue is flower
