"""The simulation's client work without the federation: plain loops, same parallelism.

``python -m bench.plain_loop --clients 500 --workers 2 --json out.json`` replays
the training calls of the benchmark's steady rounds (the same clients, sampled
by the same seeded function, the same data, steps, batches and seeds) through
the same client code (:func:`fedrouter_app.client_app.build_env` and the
method's handler), in ``workers`` plain processes with one thread each, the
parallelism of the simulation's 1-CPU actors, and at their scheduling priority
(Ray starts its workers with niceness 15: on a machine shared with other work,
a plain process at niceness 0 would get more CPU than an actor and make the
simulation look slower than it is). Calls are dealt round-robin to the
workers. Model loads, partitions and FedRouter's registration happen before
the clock starts, as the simulation's start-up does them before its steady
rounds. No Flower, no Ray, no server: what the simulation adds on top
of this is its overhead.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import NUM_ROUNDS, STEADY_ROUNDS, pin_threads, workload, write_json

# Ray's default ``worker_niceness`` (``RAY_worker_niceness``), which its actors run at.
RAY_WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", 15))  # noqa: SIM112 (Ray's spelling)


def _worker(rank: int, workers: int, num_clients: int, barrier: Any, out: Any) -> None:
    pin_threads(1)
    os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))
    import torch
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients.base import DEFAULT_ACTION
    from fedrouter_app.client_app import build_env
    from fedrouter_app.config import load_run_config
    from fedrouter_app.records import CONFIG, adapter_record
    from fedrouter_app.registry import client_class
    from fedrouter_app.rounds import sample_clients
    from fedrouter_app.training import learning_rate
    from strategies.fedrouter import REGISTER, global_adapter_name

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fedrouter-bench-") as tmp:
        overrides = workload(num_clients, tmp)
        cfg = load_run_config(overrides)
        calls = [
            (r, c)
            for r in STEADY_ROUNDS
            for c in sample_clients(range(num_clients), cfg.fraction_train, cfg.seed, r, "train")
        ][rank::workers]
        contexts = {
            c: Context(
                run_id=0,
                node_id=c,
                node_config={"partition-id": c, "num-partitions": num_clients},
                state=RecordDict(),
                run_config={},
            )
            for c in sorted({c for _, c in calls})
        }
        category, action = REGISTER.split(".")
        for context in contexts.values():  # the simulation's start-up: registration (and the model load)
            env = build_env(context, overrides)
            client_class(cfg.method.name)(env).handle(category, action, RecordDict())
        adapter = env.initial_adapter()
        barrier.wait(timeout=1800)
        start, cpu = time.perf_counter(), time.process_time()
        for r, c in calls:
            env = build_env(contexts[c], overrides)
            lr = learning_rate(cfg.train.lr_schedule, cfg.train.lr, cfg.train.lr_min, r, NUM_ROUNDS)
            n_local = int(env.state.array_records["fedrouter.clusters"]["centroids"].shape[0])
            # What the server sends: the adapter of the local cluster trained this round (round robin).
            # Which global adapter it is changes values only, not the work.
            content = RecordDict(
                {
                    global_adapter_name(0): adapter_record(adapter),
                    CONFIG: ConfigRecord(
                        {
                            "server-round": r,
                            "num-rounds": NUM_ROUNDS,
                            "lr": lr,
                            "fedrouter.map": [0] * n_local,
                            "fedrouter.train": [(r - 1) % n_local],
                        }
                    ),
                }
            )
            env.stamp(client_class(cfg.method.name)(env).handle("train", DEFAULT_ACTION, content))
        out.put((rank, time.perf_counter() - start, len(calls), time.process_time() - cpu))


def run(num_clients: int, workers: int) -> dict[str, Any]:
    """Time the steady rounds' client calls in ``workers`` plain processes."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(w, workers, num_clients, barrier, out)) for w in range(workers)]
    for proc in procs:
        proc.start()
    done = [out.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise RuntimeError(f"plain-loop worker exited with {proc.exitcode}")
    wall = max(seconds for _, seconds, _, _ in done)
    calls = sum(n for _, _, n, _ in done)
    return {
        "num_clients": num_clients,
        "workers": workers,
        "niceness": RAY_WORKER_NICENESS,
        "client_calls": calls,
        "worker_seconds": [seconds for _, seconds, _, _ in sorted(done)],
        "seconds_per_round": wall / len(STEADY_ROUNDS),
        "cpu_seconds_per_round": sum(cpu for _, _, _, cpu in done) / len(STEADY_ROUNDS),
        "calls_per_second": calls / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    write_json(args.json, run(args.clients, args.workers))


if __name__ == "__main__":
    main()
