"""Does every task carry signal? The best score on each task against the floor a method gets for nothing.

A task on which every method sits at the floor says nothing about any method,
yet it moves every column that averages it. Per (setting, task), from the runs'
saved predictions: the floor is what answering without looking at the input
scores, the share of the most common reference answer for a closed-answer task
(a handful of labels) and 0 for a generated one (no answer shares words with
every reference); the best is the highest mean score of any report row there.
A task carries signal when its best row is above the floor by more than two
standard errors of that row's mean over the task's items.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from fedrouter_app.federation.predictions_file import PREDICTIONS_FILE, iter_predictions
from fedrouter_app.report.runs import Run, last_evaluated
from fedrouter_app.report.table import line

# A task whose reference answers take at most this many values is closed-answer (its floor: the commonest one).
MAX_LABELS = 8


def task_items(runs: Sequence[Run]) -> dict[tuple[str, str, str], dict[str, list]]:
    """``(setting, row, task) -> {"scores": [...], "references": [...]}`` over every run's last evaluation."""
    out: dict[tuple[str, str, str], dict[str, list]] = defaultdict(lambda: {"scores": [], "references": []})
    for run in runs:
        last = last_evaluated(run.results)
        if last is None or not (run.path / PREDICTIONS_FILE).exists():
            continue
        for entry in iter_predictions(run.path, int(last["round"]), view=run.view):
            items = out[(run.scenario, run.method, str(entry["task"]))]
            items["scores"].append(float(entry["score"]))
            if "reference" in entry:
                items["references"].append(str(entry["reference"]).strip().lower())
    return out


def floor_of(references: Sequence[str]) -> float:
    """The share of the commonest reference for a closed-answer task, 0 for a generated one (or without texts)."""
    counts = Counter(references)
    if not references or len(counts) > MAX_LABELS:
        return 0.0
    return counts.most_common(1)[0][1] / len(references)


def signal(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per (setting, task): items, floor, the best row and its mean, standard error and margin over the floor."""
    items = task_items(runs)
    by_task: dict[tuple[str, str], dict[str, dict[str, list]]] = defaultdict(dict)
    for (scenario, row, task), values in items.items():
        by_task[(scenario, task)][row] = values
    out = []
    for (scenario, task), rows in sorted(by_task.items()):
        references = max((v["references"] for v in rows.values()), key=len)
        floor = floor_of(references)
        means = {row: statistics.fmean(v["scores"]) for row, v in rows.items() if v["scores"]}
        best = max(means, key=lambda row: means[row])
        scores = rows[best]["scores"]
        error = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else math.nan
        margin = means[best] - floor
        out.append(
            {
                "scenario": scenario,
                "task": task,
                "items": len(scores),
                "kind": "closed" if len(set(references)) <= MAX_LABELS and references else "generated",
                "floor": floor,
                "best": best,
                "best_score": means[best],
                "standard_error": error,
                "margin": margin,
                "carries_signal": bool(math.isfinite(error) and margin > 2 * error),
            }
        )
    return out


def signal_table(entries: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per (setting, task), its floor, its best row and whether it carries signal."""
    if not entries:
        return ""
    header = ["setting", "task", "kind", "items (all seeds)", "floor", "best row", "best score", "carries signal"]
    lines = [
        "Signal per task: the floor is the share of the commonest reference answer for a closed-answer task and 0 "
        "for a generated one; a task carries signal when its best row is above the floor by more than two standard "
        "errors of that row's mean over the task's items.",
        "",
        line(header),
        line(["---"] * len(header)),
    ]
    for e in entries:
        flag = "yes" if e["carries_signal"] else "**no**"
        lines.append(
            line(
                [
                    f"`{e['scenario']}`",
                    f"`{e['task']}`",
                    e["kind"],
                    str(e["items"]),
                    f"{e['floor']:.3f}",
                    f"`{e['best']}`",
                    f"{e['best_score']:.3f} ± {e['standard_error']:.3f}",
                    flag,
                ]
            )
        )
    return "\n".join(lines)
