"""What FedRouter reports of its routing and clustering: confusion, accuracy, ARI and purity per round."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrouter_app.federation.exchange import Reply
from fedrouter_app.federation.routing_diagnosis import diagnosis_summary
from fedrouter_app.federation.routing_fallback import fallback_summary
from fedrouter_app.ml.clustering import (
    majority,
    scores_from_counts,
)
from fedrouter_app.strategies.fedrouter.clustering import ClientClusters
from fedrouter_app.strategies.fedrouter.config import ROUTER_MODES


class RoutingReports:
    """Routing and clustering reports: the part of :class:`.strategy.FedRouter` that says how well it routes."""

    registry: dict[int, ClientClusters]
    cluster_tasks: list[str]

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> dict[str, Any]:
        """Routing confusion (true task -> global cluster) and accuracy, per router mode.

        A sample is routed right when its cluster mostly holds its task. Accuracy
        counts tasks some client trained on, overall and split into the
        evaluating client's own tasks and the others.
        """
        right = self.cluster_majority()
        out: dict[str, Any] = {}
        for mode in ROUTER_MODES:
            confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for reply in replies:
                for key, value in reply.metrics.items():
                    parsed = _route_key(key)
                    if parsed is None or parsed[0] != mode:
                        continue
                    _, whose, task, cluster = parsed
                    k = str(cluster)
                    confusion[task][k] += int(value)
                    if task in right.values():
                        for group in (whose, "all"):
                            hits[group][0] += int(value) * (right.get(int(k)) == task)
                            hits[group][1] += int(value)
            if not confusion:  # this router was not scored (method.local_router_view=false)
                continue
            out[mode] = {
                **{
                    ("accuracy" if g == "all" else f"accuracy_{g}"): (h[0] / h[1] if h[1] else float("nan"))
                    for g, h in sorted(hits.items())
                },
                "confusion": {
                    t: dict(sorted(r.items(), key=lambda kv: int(kv[0]))) for t, r in sorted(confusion.items())
                },
            }
        # method.router_fallback and method.diagnose_routing: pooled only when clients reported them.
        extensions = {"fallback": fallback_summary(r.metrics for r in replies)}
        extensions["diagnosis"] = diagnosis_summary(r.metrics for r in replies)
        return {"routing": out, **{name: value for name, value in extensions.items() if value}}

    def cluster_counts(self) -> dict[int, dict[str, int]]:
        """True-task counts of the training samples in each global cluster."""
        table: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for info in self.registry.values():
            for j, k in enumerate(info.assignment):
                if k < 0:
                    continue  # refused: in no global cluster
                for task, n in info.tasks[j].items():
                    table[k][task] += n
        return table

    def cluster_majority(self) -> dict[int, str]:
        """The task each global cluster mostly holds (the 'right' cluster of that task)."""
        return majority(self.cluster_counts())

    def clustering_report(self) -> dict[str, Any]:
        local = [
            scores_from_counts({j: counts for j, counts in enumerate(info.tasks)}) for info in self.registry.values()
        ]
        return {
            "n_global": len(self.centroids),
            "assignment": {str(c): info.assignment for c, info in sorted(self.registry.items())},
            "cluster_sizes": {str(c): info.sizes for c, info in sorted(self.registry.items())},
            **(
                {"refused": {str(c): sorted(i.rejected) for c, i in sorted(self.registry.items()) if i.rejected}}
                if any(i.rejected for i in self.registry.values())
                else {}
            ),
            "majority_task": {str(k): t for k, t in sorted(self.cluster_majority().items())},
            "global": scores_from_counts(self.cluster_counts()),
            "local_mean": {m: float(np.nanmean([s[m] for s in local])) for m in ("ari", "purity")} if local else {},
            "local": {str(c): s for c, s in zip(sorted(self.registry), local, strict=True)},
        }


def _route_key(key: str) -> tuple[str, str, str, int] | None:
    """``route.<mode>.<own|other>.<task>.<cluster>`` as (mode, whose, task, cluster); None if malformed."""
    parts = key.split(".")
    if len(parts) < 5 or parts[0] != "route" or parts[1] not in ROUTER_MODES or parts[2] not in ("own", "other"):
        return None
    if not parts[-1].isdigit():
        return None
    return parts[1], parts[2], ".".join(parts[3:-1]), int(parts[-1])
