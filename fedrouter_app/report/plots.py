"""Figures of a comparison (matplotlib, written as PNG).

Per scenario: final per-task scores per method, per-round curves, bytes per
round. Per run group that has them (any method that records them): the
routing confusion matrix and the cluster assignment at registration, both of
the group's first seed (cluster numbers differ between seeds, so they are not
summed).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import matplotlib
except ImportError:
    raise ImportError(
        "the report's figures need matplotlib: pip install 'fedrouter[report]' (or pass --no-plots)"
    ) from None

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedrouter_app.report.runs import Run, last_evaluated, registration_clustering, routing_mode

# 20 distinct colours, the dark ones first, so that up to 20 methods never share one.
COLORS = [*plt.cm.tab20.colors[::2], *plt.cm.tab20.colors[1::2]]


def _groups(runs: Sequence[Run], scenario: str) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.scenario == scenario:
            out[f"{run.method} [{run.variant}]" if run.variant else run.method].append(run)
    return dict(sorted(out.items()))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _final_tasks(run: Run) -> dict[str, dict[str, float]]:
    return (run.results.get("final") or {}).get("per_task", {})


def task_scores(runs: Sequence[Run], scenario: str, out: Path) -> Path:
    """Grouped bars: final score per task (mean over seeds), one bar per method; held-out tasks marked."""
    groups = _groups(runs, scenario)
    tasks = sorted({t for rs in groups.values() for r in rs for t in _final_tasks(r)})
    held = {t for rs in groups.values() for r in rs for t in r.results.get("tasks", {}).get("unseen", [])}
    width_in = min(18.0, max(6.0, 0.25 * len(tasks) * max(1, len(groups))))
    fig, ax = plt.subplots(figsize=(width_in, 4), layout="constrained")
    ax.set_prop_cycle(color=COLORS)
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(tasks))
    for i, (label, members) in enumerate(groups.items()):
        per_run = [[_final_tasks(r).get(t, {}).get("score") for r in members] for t in tasks]
        means = [_mean(v) for v in per_run]
        stds = [statistics.stdev(v) if len(v) > 1 and all(s is not None for s in v) else 0.0 for v in per_run]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, means, width, yerr=stds, label=label, capsize=2)
    ax.set_xticks(x, [f"{t}\n(held-out)" if t in held else t for t in tasks], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (mean over seeds)")
    ax.set_title(f"Per-task score after the last round — {scenario}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / f"tasks-{scenario}.png")


def _curve(members: list[Run], extract: Any) -> tuple[list[int], list[float]]:
    by_round: dict[int, list[float]] = defaultdict(list)
    for run in members:
        for r in run.results.get("rounds", []):
            value = extract(r)
            if value is not None and math.isfinite(value):
                by_round[r["round"]].append(value)
    xs = sorted(by_round)
    return xs, [_mean(by_round[x]) for x in xs]


def curves(runs: Sequence[Run], scenario: str, out: Path) -> Path:
    """Per-round training loss and evaluation scores (own tasks, all tasks), mean over seeds."""
    panels = (
        ("train loss", lambda r: r.get("train", {}).get("mean_loss")),
        ("score, own tasks", lambda r: r.get("evaluate", {}).get("own_mean", {}).get("score")),
        ("score, all tasks", lambda r: r.get("evaluate", {}).get("mean", {}).get("score")),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6), layout="constrained")
    for ax, (title, extract) in zip(axes, panels, strict=True):
        ax.set_prop_cycle(color=COLORS)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for label, members in _groups(runs, scenario).items():
            xs, ys = _curve(members, extract)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("round")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Per-round curves — {scenario} (mean over seeds)")
    return _save(fig, out / f"curves-{scenario}.png")


def bytes_per_round(runs: Sequence[Run], scenario: str, out: Path) -> Path:
    """Tensor bytes (up and down) per client in every round, mean over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, direction in zip(axes, ("up", "down"), strict=True):
        ax.set_prop_cycle(color=COLORS)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for label, members in _groups(runs, scenario).items():
            clients = max(1, int(members[0].config.get("num_clients", 1)))
            xs, ys = _curve(members, lambda r, d=direction, c=clients: r.get("traffic", {}).get(f"bytes_{d}", 0) / c)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(f"bytes {direction} per client")
        ax.set_xlabel("round")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Communication per round — {scenario}")
    return _save(fig, out / f"bytes-{scenario}.png")


def _heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], title: str, xlabel: str, ylabel: str) -> Any:
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.5 * len(cols) + 2.5), max(3.0, 0.4 * len(rows) + 1.5)), layout="constrained"
    )
    image = ax.imshow(matrix, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    return fig


def _cluster_labels(run: Run, n: int) -> list[str]:
    majority = registration_clustering(run.results).get("majority_task", {})
    return [f"{k} ({majority[str(k)]})" if str(k) in majority else str(k) for k in range(n)]


def routing_confusion(run: Run, out: Path, stem: str) -> Path | None:
    """True task x cluster routed to, at the last evaluation of ``run``; None if it records no routing."""
    mode = routing_mode(run.results, run.config)
    if mode is None:
        return None
    confusion = last_evaluated(run.results)["strategy"]["evaluate"]["routing"][mode].get("confusion", {})
    if not confusion:
        return None
    tasks = sorted(confusion)
    n = 1 + max(int(k) for counts in confusion.values() for k in counts)
    matrix = np.zeros((len(tasks), n))
    for i, task in enumerate(tasks):
        for k, count in confusion[task].items():
            matrix[i, int(k)] = count
    title = f"Routing ({mode} router), seed {run.seed}\n{stem}"
    fig = _heatmap(matrix, tasks, _cluster_labels(run, n), title, "cluster (majority task)", "true task")
    return _save(fig, out / f"routing-{stem}-{mode}.png")


def cluster_assignment(run: Run, out: Path, stem: str) -> Path | None:
    """Client x global cluster: training samples each client maps to each cluster at registration."""
    clustering = registration_clustering(run.results)
    assignment, sizes = clustering.get("assignment", {}), clustering.get("cluster_sizes", {})
    if not assignment:
        return None
    clients = sorted(assignment, key=int)
    n = int(clustering.get("n_global", 1 + max(k for ks in assignment.values() for k in ks)))
    matrix = np.zeros((len(clients), n))
    for i, client in enumerate(clients):
        for j, k in enumerate(assignment[client]):
            matrix[i, int(k)] += sizes.get(client, [1] * len(assignment[client]))[j]
    title = f"Cluster assignment at registration, seed {run.seed}\n{stem}"
    fig = _heatmap(matrix, [f"client {c}" for c in clients], _cluster_labels(run, n), title, "global cluster", "")
    return _save(fig, out / f"clusters-{stem}.png")
