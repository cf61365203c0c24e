"""Flower's simulation-runtime internals that fedrouter patches or reads, behind small functions.

The in-process simulation (:mod:`fedrouter_app.runners.simulation`) swaps two things
in Flower's simulation runtime for the duration of a run, and reads some
state of the objects involved:

- the function of the thread that moves instructions from the in-memory link
  state to the actors (``vce_api.add_messages_to_queue``, looked up when a run
  starts the thread), and the in-memory state's ``lock``, ``message_ins_store``
  and expiry check ``_check_stored_messages`` (:mod:`fedrouter_app.runtime.message_poll`);
- the Ray backend class (``raybackend.RayBackend``, looked up when a run builds
  its backend), its ``pool`` and ``app_fn`` and its ``"init_args"`` key, and the
  actor pool's ``pool``, ``num_actors``, ``client_resources`` and in-flight
  futures (:mod:`fedrouter_app.runners.actor_pool`).

The in-process runner (:mod:`fedrouter_app.runners.inprocess`) plays the SuperLink's
part: it sets the task identity and gives each message an id, which Flower
keeps in ``Metadata._message_id``.

Importing this module checks the installed flwr against :data:`TESTED_FLWR`
first, before any of those names is looked up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Queue
from typing import Any

from fedrouter_app.compat.versions import require_tested_version

TESTED_FLWR = ">=1.41,<1.42"
RELIES_ON = "patches Flower's simulation runtime"


def check_flwr_version() -> str:
    """The installed flwr version; raises ``RuntimeError`` outside :data:`TESTED_FLWR`."""
    return require_tested_version("flwr", TESTED_FLWR, RELIES_ON, "flwr==1.41.*")


# Checked before the imports below: a renamed internal module would otherwise fail with a bare ImportError.
FLWR_VERSION = check_flwr_version()

from flwr.app import Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.server.superlink.fleet.vce import vce_api  # noqa: E402
from flwr.server.superlink.fleet.vce.backend import raybackend  # noqa: E402
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState  # noqa: E402
from flwr.simulation.ray_transport.ray_actor import BasicActorPool, pool_size_from_resources  # noqa: E402
from flwr.supercore.date import now  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # noqa: E402

__all__ = [
    "FLWR_VERSION",
    "RAY_INIT_ARGS_KEY",
    "TESTED_FLWR",
    "ActorPool",
    "LinkState",
    "MessagePoller",
    "RayBackend",
    "adopt_actor_pool",
    "backend_actor_pool",
    "check_flwr_version",
    "deliver",
    "flower_message_poller",
    "grid_state",
    "is_in_memory_state",
    "polling_with",
    "pool_actors",
    "pool_fits_cluster",
    "pool_is_busy",
    "ray_backend_class",
    "serve_message_ins_with",
    "set_message_id",
    "set_task_identity",
    "state_lock",
    "store_signature",
    "undelivered_by_node",
]

# The runtime's polling thread function: (state, queue, node id -> partition id, stop event).
MessagePoller = Callable[[LinkState, Queue[Message], dict[int, int], threading.Event], None]
# Flower's Ray backend, to subclass; its actor pool.
RayBackend = raybackend.RayBackend
ActorPool = BasicActorPool
# The backend config's key for ray.init's arguments (RayBackend.init_args_key); the rest configures actors.
RAY_INIT_ARGS_KEY = "init_args"

_flower_poller: MessagePoller = vce_api.add_messages_to_queue


# Message polling.


def flower_message_poller() -> MessagePoller:
    """Flower's own polling thread function (as it was when this module was imported)."""
    return _flower_poller


@contextmanager
def polling_with(poller: MessagePoller) -> Iterator[None]:
    """Simulations started inside this block move instructions to the actors with ``poller``."""
    vce_api.add_messages_to_queue = poller
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = _flower_poller


def is_in_memory_state(state: LinkState) -> bool:
    """Whether ``state`` is Flower's in-memory link state, whose store :func:`undelivered_by_node` reads."""
    return isinstance(state, InMemoryLinkState)


def store_signature(state: LinkState) -> tuple[int, str | None]:
    """Changes whenever an instruction is stored in or removed from an in-memory state (size and newest id)."""
    assert isinstance(state, InMemoryLinkState)
    with state.lock:
        store = state.message_ins_store
        return len(store), next(reversed(store), None)


def state_lock(state: LinkState) -> Any:
    """The lock an in-memory state holds while it reads or changes its stores (re-entrant)."""
    assert isinstance(state, InMemoryLinkState)
    return state.lock


def undelivered_by_node(state: LinkState) -> dict[int, list[str]]:
    """Ids of each node's undelivered instructions, oldest first, in one pass over an in-memory state's store."""
    assert isinstance(state, InMemoryLinkState)
    waiting: dict[int, list[str]] = {}
    with state.lock:
        for message_id, message in state.message_ins_store.items():
            if message.metadata.delivered_at == "":
                waiting.setdefault(message.metadata.dst_node_id, []).append(message_id)
    return waiting


def deliver(state: LinkState, message_id: str) -> Message | None:
    """Hand out one stored instruction as Flower's ``get_message_ins`` does; None if gone or delivered.

    The state's own check drops it first if it expired or its nodes left the
    federation; otherwise it is marked delivered and returned.
    """
    assert isinstance(state, InMemoryLinkState)
    with state.lock:
        state._check_stored_messages({message_id})
        message = state.message_ins_store.get(message_id)
        if message is None or message.metadata.delivered_at != "":
            return None
        message.metadata.delivered_at = now().isoformat()
        return message


def grid_state(grid: object) -> LinkState | None:
    """The in-memory link state behind a simulation's grid (Flower's ``InMemoryGrid``), else None."""
    state = getattr(grid, "state", None)
    return state if isinstance(grid, InMemoryGrid) and isinstance(state, InMemoryLinkState) else None


def serve_message_ins_with(state: LinkState, getter: Callable[..., list[Message]]) -> Callable[..., list[Message]]:
    """Make ``getter`` answer this state's ``get_message_ins`` (for this object only); return the method it shadows."""
    assert isinstance(state, InMemoryLinkState)
    original = state.get_message_ins
    state.get_message_ins = getter  # type: ignore[method-assign]
    return original


# The Ray backend and its actor pool.


@contextmanager
def ray_backend_class(backend: type[RayBackend]) -> Iterator[None]:
    """Simulations started inside this block build ``backend`` (a subclass of Flower's) instead of Flower's."""
    original = raybackend.RayBackend
    raybackend.RayBackend = backend  # type: ignore[misc]
    try:
        yield
    finally:
        raybackend.RayBackend = original  # type: ignore[misc]


def backend_actor_pool(backend: RayBackend) -> ActorPool | None:
    """The backend's actor pool (None before ``build``)."""
    return backend.pool


def adopt_actor_pool(backend: RayBackend, pool: ActorPool, app_fn: Callable[[], ClientApp]) -> None:
    """Make ``backend`` built, on an existing ``pool``: what ``RayBackend.build`` leaves, without new actors."""
    backend.pool = pool
    backend.app_fn = app_fn


def pool_actors(pool: ActorPool) -> list[Any]:
    """The Ray actor handles of a pool."""
    return list(pool.pool)


def pool_is_busy(pool: ActorPool) -> bool:
    """Whether a message submitted to the pool has not been collected (an actor may still be working)."""
    return bool(pool._future_to_actor)


def pool_fits_cluster(pool: ActorPool) -> bool:
    """Whether the pool holds every actor it counts, and Ray's cluster now fits exactly that many.

    Raises
    ------
    ValueError
        From Flower, when the cluster cannot fit a single actor of these resources.
    """
    return pool.num_actors == len(pool.pool) == pool_size_from_resources(pool.client_resources)


# Playing the SuperLink's part in one process.


def set_task_identity(run_id: int, node_id: int, task_id: int) -> None:
    """Set the identity of the task this process runs, which a SuperLink-launched process is given."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = task_id


def set_message_id(message: Message, message_id: str) -> None:
    """Give ``message`` the id a SuperLink would (Flower's metadata has no public setter)."""
    message.metadata.__dict__["_message_id"] = message_id


def local_superlink_log() -> Path:
    """The log file of the SuperLink that ``flwr run`` starts and leaves running (under Flower's home folder).

    Flower writes no PID file for it; its ``--log-file`` argument, this path,
    is what tells it apart from any other SuperLink on the machine.
    """
    from flwr.supercore.utils import get_flwr_home

    return get_flwr_home() / "local-superlink" / "superlink.log"
