"""Ray actors kept between in-process simulations: reused when they can be, replaced when not, same results."""

import json

import pytest
import ray

from fedrouter_app.runners import actor_pool
from fedrouter_app.runners.simulation import simulate
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes


def run(*overrides: str, cpus_per_client: int = 1, keep_actors: bool = True) -> dict:
    run_dir = simulate(
        tiny_overrides("num_rounds=1", *overrides), num_cpus=2, cpus_per_client=cpus_per_client, keep_actors=keep_actors
    )
    return json.loads((run_dir / "results.json").read_text())


def kept_actor_ids() -> list[str]:
    assert actor_pool._kept is not None
    return sorted(a._actor_id.hex() for a in actor_pool._kept.pool.pool)


def losses(results: dict) -> list:
    """Held-out loss after every round and every client's training loss."""
    train = [{c: m["train-loss"] for c, m in r["train"]["clients"].items()} for r in results["rounds"] if "train" in r]
    return [r["evaluate"]["mean"]["loss"] for r in results["rounds"]] + train


def test_runs_share_actors_and_get_the_results_of_fresh_ones():
    actor_pool.release_actors()
    fresh = run("method=fedit")
    first = kept_actor_ids()
    assert len(first) == 2
    # Another method, scenario and seed in between: nothing of it may leak into the next run.
    run("method=fedrouter", "scenario=iid", "seed=3")
    assert kept_actor_ids() == first
    again = run("method=fedit")
    assert kept_actor_ids() == first
    assert losses(again) == losses(fresh)


def test_other_client_resources_start_new_actors_on_the_same_ray():
    run("method=local")
    before = kept_actor_ids()
    session = ray.get_runtime_context().get_node_id()
    run("method=local", cpus_per_client=2)
    after = kept_actor_ids()
    assert len(after) == 1 and not set(after) & set(before)
    assert ray.get_runtime_context().get_node_id() == session


def test_a_dead_actor_is_replaced():
    run("method=local")
    ray.kill(actor_pool._kept.pool.pool[0])
    results = run("method=local")
    assert results["run"]["status"] == "completed"
    assert len(kept_actor_ids()) == 2


def test_a_run_after_ray_was_shut_down_starts_afresh():
    run("method=local")
    before = kept_actor_ids()
    ray.shutdown()
    assert run("method=local")["run"]["status"] == "completed"
    assert len(kept_actor_ids()) == 2 and not set(kept_actor_ids()) & set(before)


def test_keep_actors_false_stops_them():
    run("method=local", keep_actors=False)
    assert actor_pool._kept is None
    assert not ray.is_initialized()
