"""Privacy trade-off of FedRouter's shared centroids: routing accuracy against the centroid noise multiplier.

``python -m bench.privacy`` runs FedRouter on the embedded default (8 clients,
``dual``) once per noise multiplier z, each client sharing centroids of
embeddings clipped to L2 norm ``--clip`` with Gaussian noise of std
z * C / cluster size (see :mod:`fedrouter_app.centroid_privacy`), and records
the clustering at registration (global ARI against the true tasks) and the
routing accuracy of the one evaluation (every task, ``eval.scope=global``;
mean ± standard deviation over seeds).
Routing depends on the centroids only, so the runs are cut short: one round of
one local step, 4 test examples per task, answers of one token (the scores are
not meaningful, routing is). Clients run in this process, one after the other, through the real
ServerApp and ClientApp code (no Ray), sharing one model. It prints a table
and writes ``outputs/bench/privacy.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

# The in-process grid of the tests: clients answer one after the other in this process, through the real apps.
from fedrouter_app.inprocess import run_inprocess

NOISE = (0.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)
SHORT = (
    "method=fedrouter",
    "num_rounds=1",
    "train.local_steps=1",
    "eval.at_start=false",
    "eval.scope=global",
    "eval.max_new_tokens=1",
    "scenario.test_examples_per_task=4",
    "checkpoint.every=0",
    "output.save_adapters=false",
)


def run_one(overrides: list[str], num_clients: int) -> dict[str, Any]:
    """One short run; its registration ARI and routing accuracy."""
    start = time.perf_counter()
    results, _, _ = run_inprocess(overrides, num_clients)
    first, last = results["rounds"][0], results["rounds"][-1]
    routing = last["strategy"]["evaluate"]["routing"]
    return {
        "global_ari": first["strategy"]["setup"]["clustering"]["global"]["ari"],
        "routing_global": routing["global"].get("accuracy"),
        "routing_global_other": routing["global"].get("accuracy_other"),
        # The local router only chooses among the client's own clusters: its accuracy on the client's own tasks.
        "routing_local_own": routing["local"].get("accuracy_own"),
        "failures": len(last["failures"]) + len(first["failures"]),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="noise multipliers z")
    parser.add_argument("--clip", type=float, default=5.0, help="C: L2 bound on each embedding")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", default="outputs/bench/privacy.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedrouter-privacy-") as tmp:
        for seed in args.seeds:
            for z in args.noise:
                overrides = [
                    *SHORT,
                    f"num_clients={args.clients}",
                    f"seed={seed}",
                    f"method.centroid_clip={args.clip}",
                    f"method.centroid_noise={z}",
                    f"output.dir={tmp}",
                ]
                row = {"noise_multiplier": z, "clip": args.clip, "seed": seed, **run_one(overrides, args.clients)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    head = f"noise std per coordinate (C={args.clip:g}, n=64)"
    print(f"\n| z | {head} | global ARI | routing acc, global router | routing acc, local router (own tasks) |")
    print("| --- | --- | --- | --- | --- |")
    for z in args.noise:
        runs = [r for r in rows if r["noise_multiplier"] == z]
        cells = [_mean_std([r[k] for r in runs]) for k in ("global_ari", "routing_global", "routing_local_own")]
        print(f"| {z:g} | {z * args.clip / 64:.3f} | " + " | ".join(cells) + " |")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


if __name__ == "__main__":
    main()
