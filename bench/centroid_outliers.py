"""False and true refusals of ``method.centroid_outlier_threshold`` at FedRouter's registration.

``python -m bench.centroid_outliers`` registers every client of a run (the
real client code: embedding, local k-means; and, for the attacked runs, the
real ``attack.kind=pollute``), clusters the centroids globally as the server
does, and computes each centroid's leave-one-out distance over the median
(:mod:`fedrouter_app.cluster_defences`). A centroid is refused at threshold t
when that ratio exceeds t, so one registration gives the refusal rates of
every threshold: on honest clients (false refusals) and on the attacker's
centroids (detections). Registration only: nothing is trained. It prints a
table and writes ``outputs/bench/centroid_outliers.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from clients.fedrouter import FedRouterClient
from fedrouter_app.attacks import attack_reply, malicious_clients
from fedrouter_app.client_env import ClientEnv
from fedrouter_app.cluster_defences import leave_one_out_distances
from fedrouter_app.clustering import kmeans
from fedrouter_app.config import load_run_config
from fedrouter_app.data.partition import build_client_data
from fedrouter_app.records import METRICS
from fedrouter_app.rounds import Reply
from fedrouter_app.seeding import derive_seed
from strategies.fedrouter import REGISTER, FedRouter

THRESHOLDS = (2.0, 3.0, 5.0, 10.0, 20.0)
SCENARIOS = ("dual", "dirichlet", "iid", "cross_task")


def registration_ratios(overrides: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each registered centroid's leave-one-out distance over the median, and whether its client attacks."""
    cfg = load_run_config(overrides)
    attackers = malicious_clients(cfg.seed, cfg.num_clients, cfg.attack.fraction) if cfg.attack.kind != "none" else ()
    from fedrouter_app.model.loading import lora_template

    strategy = FedRouter(cfg, lora_template(cfg.model, cfg.lora))
    for client in range(cfg.num_clients):
        env = ClientEnv(cfg=cfg, data=build_client_data(cfg, client), state=RecordDict())
        method = FedRouterClient(env)
        content = attack_reply(env, method, REGISTER, RecordDict(), method.handle("query", "register", RecordDict()))
        reply = Reply(client=client, metrics=dict(content[METRICS]), adapters={}, content=content)
        strategy.registry[client] = strategy._read_registration(reply)
    items, points = strategy._local_clusters()
    _, labels = kmeans(points, cfg.method.n_global, derive_seed(cfg.seed, "global-kmeans"))
    distances = leave_one_out_distances(points, labels)
    return distances / np.median(distances), np.array([c in attackers for c, _ in items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=10.0, help="attack.scale of the polluted runs")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/centroid_outliers.json"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for scenario in SCENARIOS:
        for attack in ("none", "pollute"):
            honest, attacked = [], []
            for seed in range(args.seeds):
                overrides = [f"scenario={scenario}", f"seed={seed}", "method=fedrouter", f"attack.kind={attack}"]
                ratios, malicious = registration_ratios([*overrides, f"attack.scale={args.scale}"])
                honest.append(ratios[~malicious])
                attacked.append(ratios[malicious])
            h, a = np.concatenate(honest), np.concatenate(attacked)
            row = {
                "scenario": scenario,
                "attack": attack,
                "honest_centroids": int(h.size),
                "attacker_centroids": int(a.size),
                "max_honest_ratio": float(h.max()),
                "false_refusals": {str(t): float((h > t).mean()) for t in THRESHOLDS},
                "detections": {str(t): float((a > t).mean()) for t in THRESHOLDS} if a.size else {},
            }
            rows.append(row)
            false = " ".join(f"{row['false_refusals'][str(t)]:.3f}" for t in THRESHOLDS)
            found = " ".join(f"{row['detections'][str(t)]:.2f}" for t in THRESHOLDS) if a.size else "-"
            print(f"{scenario:11s} {attack:8s} honest {h.size:4d} max {h.max():6.2f} | false {false} | found {found}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"thresholds": THRESHOLDS, "seeds": args.seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
