"""Ray actors kept from one in-process simulation to the next.

Flower's Ray backend starts a pool of actors for every run and stops them, and
Ray, when the run ends. In a sweep or a test session every run therefore pays
for new worker processes that import torch, transformers and peft and load the
base model: about 8 s a run on 2 cores, a third of a short sweep job. Nothing
in an actor belongs to a run: every message carries its run's ClientApp and its
node's Context, and the per-process model cache is keyed by the model settings.

:class:`KeptRayBackend` is Flower's backend except at the two ends of a run: it
takes over the actors the previous run in this process left, when that run
asked for the same resources per client and every actor still answers, and at
the end it leaves its actors and Ray up for the next run. Other resources or a
dead actor get new actors; other Ray settings (CPUs, address) a new Ray.
:func:`release_actors` stops actors and Ray; it runs at exit.
:func:`keeping_actors` installs the backend for the duration of one
``run_simulation`` call (Flower's simulation runtime looks the class up when a
run starts). The Flower internals involved are behind
:mod:`fedrouter_app.compat.flwr_internals`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from flwr.clientapp import ClientApp

from fedrouter_app.compat.flwr_internals import (
    RAY_INIT_ARGS_KEY,
    ActorPool,
    RayBackend,
    adopt_actor_pool,
    backend_actor_pool,
    pool_actors,
    pool_fits_cluster,
    pool_is_busy,
    ray_backend_class,
)
from fedrouter_app.logs import get_logger

log = get_logger(__name__)

# How long the kept actors get to answer before a run replaces them.
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KeptPool:
    """Actors a finished run left, and the settings they were made with."""

    ray_settings: str
    actor_settings: str
    pool: ActorPool
    ray_node: str  # this process's Ray node: another one (Ray shut down and started again) means stale handles


_lock = threading.Lock()
_kept: KeptPool | None = None


def _settings(config: Any) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _pop_kept() -> KeptPool | None:
    global _kept
    with _lock:
        kept, _kept = _kept, None
    return kept


def _kill(pool: ActorPool) -> None:
    for actor in pool_actors(pool):
        with contextlib.suppress(ray.exceptions.RayError, ValueError):
            ray.kill(actor)


def release_actors() -> None:
    """Stop the kept actors, if any, and disconnect from Ray."""
    kept = _pop_kept()
    if kept is None or not ray.is_initialized():
        return
    _kill(kept.pool)
    ray.shutdown()


atexit.register(release_actors)


def _ray_node() -> str:
    return str(ray.get_runtime_context().get_node_id())


def _reusable(pool: ActorPool) -> bool:
    """Every actor of ``pool`` answers, and the cluster still fits exactly that many."""
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool_actors(pool)], timeout=READY_TIMEOUT_S)
        # Ray's cluster can have gained or lost machines since.
        return pool_fits_cluster(pool)
    except (ray.exceptions.RayError, ValueError) as error:
        log.warning("kept Ray actors cannot be reused (%s); starting new ones", error)
        return False


class KeptRayBackend(RayBackend):
    """Flower's Ray backend, keeping its actors and Ray up between runs in this process."""

    init_args_key_name = RAY_INIT_ARGS_KEY  # Flower's key for ray.init's arguments; the rest configures actors

    def __init__(self, backend_config: dict[str, Any]) -> None:
        self.ray_settings = _settings(backend_config.get(self.init_args_key_name))
        self.actor_settings = _settings({k: v for k, v in backend_config.items() if k != self.init_args_key_name})
        if _kept is not None and _kept.ray_settings != self.ray_settings:
            # Before Flower initialises Ray: the new settings must take effect.
            release_actors()
        super().__init__(backend_config)

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        kept = _pop_kept()
        if kept is not None and kept.ray_node != _ray_node():
            kept = None  # Ray was shut down since (by someone else): its actors are gone with it
        if kept is not None and kept.actor_settings == self.actor_settings and _reusable(kept.pool):
            adopt_actor_pool(self, kept.pool, app_fn)
            log.info("reusing %d Ray actors from the previous run", kept.pool.num_actors)
            return
        if kept is not None:
            _kill(kept.pool)
        super().build(app_fn)

    def terminate(self) -> None:
        global _kept
        pool = backend_actor_pool(self)
        # An actor still busy (a message the run stopped waiting for) cannot be handed on.
        if pool is None or pool_is_busy(pool):
            super().terminate()
            return
        with _lock:
            previous, _kept = _kept, KeptPool(self.ray_settings, self.actor_settings, pool, _ray_node())
        if previous is not None and previous.pool is not pool:
            _kill(previous.pool)


@contextmanager
def keeping_actors() -> Iterator[None]:
    """Run the simulations started inside this block on :class:`KeptRayBackend`."""
    with ray_backend_class(KeptRayBackend):
        yield
