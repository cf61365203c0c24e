"""What fedrouter relies on in Flower's simulation runtime: still there, still doing what the patches need.

Each test pins one thing :mod:`fedrouter_app.compat.flwr_internals` uses, so
that a Flower upgrade that moves it fails here rather than in a run.
"""

import inspect
import subprocess
import sys
import threading
from queue import Queue
from types import SimpleNamespace

import pytest
from flwr.app import Message, RecordDict
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.simulation.ray_transport import ray_actor
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedrouter_app.compat import flwr_internals, versions
from fedrouter_app.compat.flwr_internals import (
    RAY_INIT_ARGS_KEY,
    ActorPool,
    RayBackend,
    adopt_actor_pool,
    backend_actor_pool,
    flower_message_poller,
    grid_state,
    is_in_memory_state,
    polling_with,
    pool_actors,
    pool_fits_cluster,
    pool_is_busy,
    ray_backend_class,
    set_message_id,
    set_task_identity,
    undelivered_by_node,
)


def in_memory_state():
    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()


def stored(node: int, delivered: bool = False) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at="then" if delivered else ""))


# The version fence.


def test_the_installed_flwr_is_in_the_tested_range():
    assert flwr_internals.check_flwr_version() == versions.installed_version("flwr")


@pytest.mark.parametrize("found", ["1.42.0", "1.40.3", "2.0.0"])
def test_a_flwr_outside_the_tested_range_fails_with_one_line(monkeypatch, found):
    monkeypatch.setattr(versions, "installed_version", lambda distribution: found)
    with pytest.raises(RuntimeError) as error:
        flwr_internals.check_flwr_version()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"fedrouter patches Flower's simulation runtime and was tested with flwr >=1.41,<1.42; found {found}."
    )
    assert "flwr==1.41.*" in message


def test_patch_releases_and_their_pre_releases_are_inside(monkeypatch):
    for found in ("1.41.0", "1.41.7", "1.41.1rc2"):
        monkeypatch.setattr(versions, "installed_version", lambda distribution, found=found: found)
        assert flwr_internals.check_flwr_version() == found


def test_importing_the_fence_under_another_flwr_fails_before_touching_internals():
    script = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda d: '1.42.0' if d == 'flwr' else real(d)\n"
        "import fedrouter_app.compat.flwr_internals\n"
        "import sys\n"
        "sys.exit('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: fedrouter patches Flower's simulation runtime"), done.stderr
    assert "flwr.server" not in done.stderr  # failed at the check, not at an internal import


# Message polling.


def test_the_runtime_starts_its_polling_thread_with_the_module_global():
    # run_api looks add_messages_to_queue up when it starts the thread, so swapping the global takes effect.
    assert "add_messages_to_queue" in vce_api.run_api.__code__.co_names
    params = list(inspect.signature(vce_api.add_messages_to_queue).parameters)
    assert params == ["state", "queue", "nodes_mapping", "f_stop"]
    assert flower_message_poller() is vce_api.add_messages_to_queue


def test_polling_with_swaps_the_poller_only_inside_the_block_even_on_error():
    def poller(state, queue, nodes_mapping, f_stop) -> None:
        pass

    with pytest.raises(KeyError), polling_with(poller):
        assert vce_api.add_messages_to_queue is poller
        raise KeyError("x")
    assert vce_api.add_messages_to_queue is flower_message_poller()


def test_the_in_memory_state_keeps_its_instructions_in_a_locked_dict():
    state = in_memory_state()
    assert is_in_memory_state(state)
    assert not is_in_memory_state(SimpleNamespace())
    assert isinstance(state.message_ins_store, dict)
    assert state.lock.acquire(timeout=1)  # the lock replies and deliveries take too
    state.lock.release()
    state.message_ins_store.update({"a": stored(7), "b": stored(8, delivered=True), "c": stored(7), "d": stored(9)})
    assert undelivered_by_node(state) == {7: ["a", "c"], 9: ["d"]}  # oldest first: the store keeps insertion order


def test_a_new_message_says_where_it_goes_and_that_it_is_not_delivered():
    set_task_identity(run_id=1, node_id=0, task_id=0)
    message = Message(RecordDict(), dst_node_id=42, message_type="train")
    assert message.metadata.dst_node_id == 42
    assert message.metadata.delivered_at == ""


def test_flowers_poller_asks_the_state_for_each_node():
    asked: list[int] = []
    stop = threading.Event()

    def get_message_ins(node_id: int, limit: int) -> list:
        asked.append(node_id)
        stop.set()
        return []

    flower_message_poller()(SimpleNamespace(get_message_ins=get_message_ins), Queue(), {5: 0}, stop)
    assert asked == [5]


# The Ray backend and its actor pool.


def test_the_runtime_builds_the_backend_class_it_finds_in_the_module_when_a_run_starts():
    assert "from .backend.raybackend import RayBackend" in inspect.getsource(vce_api.start_vce)
    assert RayBackend is raybackend.RayBackend


def test_ray_backend_class_swaps_the_class_only_inside_the_block():
    class Mine(RayBackend):
        pass

    with ray_backend_class(Mine):
        assert raybackend.RayBackend is Mine
    assert raybackend.RayBackend is RayBackend


@pytest.fixture
def backend(monkeypatch) -> RayBackend:
    """Flower's Ray backend, made without starting Ray."""
    monkeypatch.setattr(RayBackend, "init_ray", lambda self, config: None)
    return RayBackend({"client_resources": {"num_cpus": 1}, RAY_INIT_ARGS_KEY: {"num_cpus": 2}})


@pytest.fixture
def pool(monkeypatch) -> ActorPool:
    """Flower's actor pool, made without Ray (no actor is created until asked)."""
    monkeypatch.setattr(ray_actor, "pool_size_from_resources", lambda resources: 2)
    return ActorPool(actor_type=SimpleNamespace(), client_resources={"num_cpus": 1}, actor_kwargs={})


def test_the_backend_names_its_ray_init_key_and_starts_without_a_pool(backend):
    assert backend.init_args_key == RAY_INIT_ARGS_KEY
    assert backend_actor_pool(backend) is None
    assert list(inspect.signature(RayBackend.build).parameters) == ["self", "app_fn"]
    assert list(inspect.signature(RayBackend.terminate).parameters) == ["self"]


def test_adopting_a_pool_makes_the_backend_serve_from_it(backend, pool):
    pool.num_actors = 2

    def app_fn() -> None:
        return None

    adopt_actor_pool(backend, pool, app_fn)
    assert backend_actor_pool(backend) is pool
    assert backend.app_fn is app_fn
    assert backend.num_workers == 2  # Flower's own methods read what adopt_actor_pool set


def test_the_pool_lists_its_actors_and_its_in_flight_futures(pool, monkeypatch):
    assert pool_actors(pool) == [] and pool.num_actors == 0 and pool.client_resources == {"num_cpus": 1}
    assert not pool_is_busy(pool)
    pool._future_to_actor["future"] = (0, "actor", "0")
    assert pool_is_busy(pool)
    pool.pool.extend(["a", "b"])
    pool.num_actors = 2
    assert pool_actors(pool) == ["a", "b"]
    monkeypatch.setattr(flwr_internals, "pool_size_from_resources", lambda resources: 2)
    assert pool_fits_cluster(pool)
    monkeypatch.setattr(flwr_internals, "pool_size_from_resources", lambda resources: 3)
    assert not pool_fits_cluster(pool)


def test_pool_size_is_computed_from_client_resources():
    assert list(inspect.signature(ray_actor.pool_size_from_resources).parameters) == ["client_resources"]
    assert flwr_internals.pool_size_from_resources is ray_actor.pool_size_from_resources


# The SuperLink's part in one process.


def test_task_identity_and_message_ids_can_be_set():
    set_task_identity(run_id=3, node_id=4, task_id=5)
    assert (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id) == (3, 4, 5)
    message = Message(RecordDict(), dst_node_id=1, message_type="train")
    set_message_id(message, "abc")
    assert message.metadata.message_id == "abc"


def test_the_simulation_grid_exposes_its_state_and_the_state_its_expiry_check():
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    grid = InMemoryGrid(state_factory=factory)
    assert grid_state(grid) is factory.state()
    assert grid_state(SimpleNamespace(state=factory.state())) is None
    params = list(inspect.signature(InMemoryLinkState._check_stored_messages).parameters)
    assert params[:2] == ["self", "message_ids"]
    # The delivery index shadows get_message_ins on one state object; Flower's poller looks it up on every call.
    assert "get_message_ins" in vce_api.add_messages_to_queue.__code__.co_names
