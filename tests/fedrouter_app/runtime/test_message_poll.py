"""Message delivery in the simulation runtime: every message once, in order, at a cost flat in the federation."""

import threading
import time
from queue import Queue

import pytest
from flwr.app import Message, RecordDict
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedrouter_app.compat.flwr_internals import flower_message_poller, set_message_id, set_task_identity
from fedrouter_app.runtime import message_poll
from fedrouter_app.runtime.message_poll import (
    DeliveryIndex,
    add_indexed_messages_to_queue,
    index_grid_deliveries,
    indexed_delivery,
)

RUN_ID = 5


def factory() -> LinkStateFactory:
    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())


def with_run(state):
    run = Run.create_empty(RUN_ID)
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    return state


def store(state, node: int, message_id: str) -> Message:
    set_task_identity(run_id=RUN_ID, node_id=0, task_id=0)
    message = Message(RecordDict(), dst_node_id=node, message_type="train")
    set_message_id(message, message_id)
    state.message_ins_store[message_id] = message
    return message


def no_refresh_wait(monkeypatch):
    monkeypatch.setattr(message_poll, "REFRESH_S", 0.0)


def test_a_node_gets_its_messages_oldest_first_one_per_ask(monkeypatch):
    no_refresh_wait(monkeypatch)
    state = with_run(factory().state())
    first, second, other = store(state, 7, "a"), store(state, 7, "b"), store(state, 9, "c")
    index = DeliveryIndex(state)
    assert index.take(7) == [first]
    assert first.metadata.delivered_at != ""
    assert index.take(7) == [second]
    assert index.take(7) == []
    assert index.take(9) == [other]
    assert index.take(3) == []


def test_a_message_stored_later_or_delivered_elsewhere_is_seen(monkeypatch):
    no_refresh_wait(monkeypatch)
    state = with_run(factory().state())
    index = DeliveryIndex(state)
    taken_elsewhere = store(state, 7, "a")
    later = store(state, 7, "b")
    taken_elsewhere.metadata.delivered_at = "by someone else"
    assert index.take(7) == [later]
    newest = store(state, 7, "c")
    assert index.take(7) == [newest]


def test_an_expired_message_is_dropped_by_the_states_own_check(monkeypatch):
    no_refresh_wait(monkeypatch)
    state = with_run(factory().state())
    expired = store(state, 7, "a")
    expired.metadata.created_at = time.time() - 100
    expired.metadata.ttl = 1
    fresh = store(state, 7, "b")
    assert DeliveryIndex(state).take(7) == [fresh]
    assert "a" not in state.message_ins_store


def test_take_all_hands_each_served_node_its_next_message(monkeypatch):
    no_refresh_wait(monkeypatch)
    state = with_run(factory().state())
    messages = {node: store(state, node, f"m{node}") for node in (3, 250, 499)}
    store(state, 3, "m3-second")
    store(state, 10_000, "not-ours")
    index = DeliveryIndex(state)
    taken = index.take_all(range(500))
    assert sorted(m.metadata.message_id for m in taken) == ["m250", "m3", "m499"]
    assert all(messages[m.metadata.dst_node_id] is m for m in taken)
    assert [m.metadata.message_id for m in index.take_all(range(500))] == ["m3-second"]
    assert index.take_all(range(500)) == []


def test_the_index_is_rebuilt_only_when_the_store_changes(monkeypatch):
    no_refresh_wait(monkeypatch)
    state = with_run(factory().state())
    for node in range(2000):
        store(state, node, f"m{node}")
    rebuilds = []
    real = message_poll.undelivered_by_node
    monkeypatch.setattr(message_poll, "undelivered_by_node", lambda s: rebuilds.append(1) or real(s))
    index = DeliveryIndex(state)
    # One pass of Flower's poller over every node: every message handed out, the store scanned once.
    assert sum(len(index.take(node)) for node in range(2000)) == 2000
    assert sum(len(index.take(node)) for node in range(2000)) == 0
    assert len(rebuilds) == 1
    store(state, 5, "new")
    assert index.take(5)[0].metadata.message_id == "new"
    assert len(rebuilds) == 2


def test_the_polling_thread_queues_each_message_once():
    state = with_run(factory().state())
    for node in (3, 250, 499):
        store(state, node, f"m{node}")
    stop, queue = threading.Event(), Queue()
    thread = threading.Thread(
        target=add_indexed_messages_to_queue, args=(state, queue, dict.fromkeys(range(500)), stop)
    )
    thread.start()
    deadline = time.monotonic() + 10
    while queue.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # several more passes: nothing is queued twice
    stop.set()
    thread.join(timeout=10)
    assert sorted(queue.get_nowait().metadata.message_id for _ in range(3)) == ["m250", "m3", "m499"]
    assert queue.empty()


def test_flowers_own_poller_asks_the_index_once_the_grid_is_indexed():
    states = factory()
    grid = InMemoryGrid(state_factory=states)
    state = with_run(states.state())
    assert grid.state is state
    assert index_grid_deliveries(grid)
    for node in range(300):
        store(state, node, f"m{node}")
    stop, queue = threading.Event(), Queue()
    poller = threading.Thread(target=flower_message_poller(), args=(state, queue, dict.fromkeys(range(300)), stop))
    poller.start()
    deadline = time.monotonic() + 20
    while queue.qsize() < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    poller.join(timeout=10)
    assert sorted(queue.get_nowait().metadata.message_id for _ in range(300)) == sorted(f"m{n}" for n in range(300))
    assert queue.empty()
    # Asks other than the poller's still reach the state's own method.
    store(state, 1, "late")
    assert [m.metadata.message_id for m in state.get_message_ins(node_id=1, limit=None)] == ["late"]


def test_only_simulation_grids_are_indexed():
    assert not index_grid_deliveries(object())


def test_flower_polling_is_swapped_only_inside_the_block():
    flower = vce_api.add_messages_to_queue
    with indexed_delivery():
        assert vce_api.add_messages_to_queue is add_indexed_messages_to_queue
    assert vce_api.add_messages_to_queue is flower


@pytest.mark.parametrize("refresh", [0.0, 0.5])
def test_a_message_stored_between_rebuilds_waits_at_most_one_refresh(monkeypatch, refresh):
    monkeypatch.setattr(message_poll, "REFRESH_S", refresh)
    state = with_run(factory().state())
    store(state, 1, "a")
    index = DeliveryIndex(state)
    assert len(index.take(1)) == 1
    store(state, 1, "b")
    expected = [] if refresh else ["b"]
    assert [m.metadata.message_id for m in index.take(1)] == expected
