"""Why held-out tasks fail, measured: every adapter a router could have chosen, against what it chose.

Runs that diagnose their routing (FedRouter's ``method.diagnose_routing``)
score each diagnosed test sample under every cluster adapter, under their
uniform average and under the bare base model, beside the routed answer, and
the server pools these per task (``rounds[-1].strategy.evaluate.diagnosis``).
Here they are averaged over seeds per (setting, task) and set beside the
other methods' scores on the same task and setting, so a reader sees which
answer would have been best and how far the router is from the per-sample
best (the oracle gap).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from fedrouter_app.report.runs import Run, last_evaluated
from fedrouter_app.report.table import Row, line

# Per task, what the diagnosis pools (the best single cluster is taken per seed, before averaging).
FIELDS = ("routed", "best_cluster", "average", "base", "oracle")
TITLES = {
    "routed": "routed",
    "best_cluster": "best single cluster",
    "average": "average of the clusters",
    "base": "base model",
    "oracle": "per-sample best (oracle)",
}


def diagnosis_of(run: Run) -> dict[str, dict[str, float]]:
    """Task -> the run's pooled diagnosis means (``FIELDS``); empty where the run did not diagnose."""
    last = last_evaluated(run.results) or {}
    pooled = (last.get("strategy") or {}).get("evaluate", {}).get("diagnosis") or {}
    out = {}
    for task, entry in pooled.items():
        clusters = [float(v) for v in (entry.get("cluster") or {}).values()]
        out[task] = {
            "routed": float(entry.get("routed", math.nan)),
            "best_cluster": max(clusters) if clusters else math.nan,
            "average": float(entry.get("average", math.nan)),
            "base": float(entry.get("base", math.nan)),
            "oracle": float(entry.get("oracle", math.nan)),
        }
    return out


def diagnoses(runs: Sequence[Run], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per (setting, method, task) diagnosed: the means over seeds, and every other row's score on the task there."""
    by: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.view:
            continue
        for task, values in diagnosis_of(run).items():
            for name, value in values.items():
                by[(run.scenario, run.method, task)][name].append(value)
    out = []
    for (scenario, method, task), values in sorted(by.items()):
        others = {
            row.label: row.tasks[task]["all"].mean
            for row in rows
            if row.scenario == scenario and task in row.tasks and row.tasks[task].get("all") is not None
        }
        entry: dict[str, Any] = {"scenario": scenario, "method": method, "task": task, "seeds": len(values["routed"])}
        entry.update({name: statistics.fmean(v) for name, v in values.items()})
        entry["oracle_gap"] = entry["oracle"] - entry["routed"]
        entry["methods"] = others
        out.append(entry)
    return out


def diagnosis_table(entries: Sequence[dict[str, Any]]) -> str:
    """Markdown: per diagnosed task, each answer the router could have given and every method's score there."""
    if not entries:
        return ""
    methods = sorted({name for e in entries for name in e["methods"]})
    header = ["setting", "task", *(TITLES[f] for f in FIELDS), *(f"`{m}`" for m in methods)]
    lines = [
        "Why routing fails on held-out samples: the routed method's diagnosed samples scored under the adapter it "
        "routed to, the best single cluster adapter (per seed), the uniform average of the cluster adapters, the base "
        "model alone, and per sample the best cluster adapter (the oracle), beside every method's score on the task "
        "(means over seeds).",
        "",
        line(header),
        line(["---"] * len(header)),
    ]
    for e in entries:
        cells = [f"{e[f]:.3f}" for f in FIELDS]
        scores = [f"{e['methods'][m]:.3f}" if m in e["methods"] else "-" for m in methods]
        lines.append(line([f"`{e['scenario']}`", f"`{e['task']}` ({e['method']})", *cells, *scores]))
    return "\n".join(lines)
