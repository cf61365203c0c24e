"""Aggregation over seeds and the per-scenario Markdown tables of scores, cost and routing.

Runs are grouped by (scenario, method, variant); each metric is summarised by
its mean and sample standard deviation over the group's runs (seeds), and
score metrics also by their relative gain over a reference method (FedIT by
default) in the same scenario. Paired differences are in
:mod:`fedrouter_app.report.paired`, per-task tables in
:mod:`fedrouter_app.report.tasks`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedrouter_app.report.runs import Run, task_scores


@dataclass(frozen=True)
class Column:
    """A metric of the report: its key in ``Run.metrics`` and ``report.json``, header, kind and meaning."""

    key: str
    title: str
    kind: str  # score | loss | bytes | count: how it is formatted
    description: str


COLUMNS: tuple[Column, ...] = (
    Column(
        "own",
        "own tasks (P)",
        "score",
        "each client on its own tasks, those it holds training data for (personalisation, P)",
    ),
    Column(
        "other_clients",
        "other clients' tasks",
        "score",
        "each client on tasks it holds no training data for but another client does (generalisation across "
        "clients, the FedRouter paper's claim: scenario `paper_split`, where each task is on several clients; also "
        "`cross_task`, one client per task, or `single` with eval.scope=global)",
    ),
    Column(
        "held_out",
        "held-out tasks",
        "score",
        "tasks no client trains on, every client tested (generalisation to new tasks, scenario `unseen`: "
        "this project's extension, not a claim of the FedRouter paper)",
    ),
    Column(
        "all",
        "all tasks (TTP)",
        "score",
        "every task a client is tested on; under eval.scope=global every task (test-time personalisation, TTP)",
    ),
    Column("seen", "seen tasks", "score", "tasks some client trains on, every client tested on them pooled"),
    Column("loss", "eval loss", "loss", "mean teacher-forced loss of the reference answers over all tasks"),
    Column(
        "routing",
        "routing acc",
        "score",
        "methods that route: share of test samples of trained tasks sent to the cluster that mostly holds their task",
    ),
    Column("routing_own", "routing acc, own", "score", "routing accuracy on the client's own tasks"),
    Column("routing_other", "routing acc, other clients'", "score", "routing accuracy on other clients' tasks"),
    Column(
        "ari_global",
        "ARI global",
        "score",
        "adjusted Rand index, at registration, of the server's clustering of all local clusters against their "
        "true tasks (1: clusters are the tasks; 0: chance)",
    ),
    Column(
        "ari_local",
        "ARI local (mean)",
        "score",
        "adjusted Rand index of each client's clustering of its own training samples against their true tasks, "
        "mean over clients (a client holding a single task scores 0 when it splits it: there is nothing to separate)",
    ),
    Column("ari_local_min", "ARI local (min)", "score", "the lowest client's local ARI"),
    Column("up", "bytes up", "bytes", "tensor bytes a client sends, every phase, per client-round"),
    Column("down", "bytes down", "bytes", "tensor bytes a client receives, every phase, per client-round"),
    Column("train_steps", "train steps", "count", "optimizer steps per client-round"),
    Column("train_tokens", "train tokens", "count", "non-padding tokens in training batches per client-round"),
    Column(
        "forward_tokens",
        "forward tokens",
        "count",
        "token positions the base model computed per client-round, padding included: training forwards, "
        "teacher passes, scoring, generation steps, embeddings",
    ),
)
COLUMN = {c.key: c for c in COLUMNS}
# The columns of each Markdown table (report.json carries every column).
SCORE_TABLE = ("own", "other_clients", "held_out", "all", "loss")
COST_TABLE = ("up", "down", "train_steps", "train_tokens", "forward_tokens")
ROUTING_TABLE = ("routing", "routing_own", "routing_other", "ari_global", "ari_local", "ari_local_min")
GAIN_METRICS = ("own", "other_clients", "held_out", "all")
TASK_VIEWS = ("all", "own", "other_clients")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of the finite values of a metric."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else math.nan
        return cls(statistics.fmean(finite), std, len(finite))

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass
class Row:
    """One (scenario, method, variant) group of runs.

    ``per_seed`` holds each metric's value per seed (the mean, should a seed
    have run twice), for paired comparisons; ``tasks`` the final score per task
    and view (:data:`TASK_VIEWS`) over seeds, ``examples`` the test examples
    behind each task's pooled score.
    """

    scenario: str
    method: str
    variant: str
    seeds: list[int]
    stats: dict[str, Stat]
    method_name: str = ""
    uses_task_labels: bool | None = None
    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Stat]] = field(default_factory=dict)
    examples: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    @property
    def label_free(self) -> str:
        return {True: "no", False: "yes", None: "?"}[self.uses_task_labels]


def _per_seed(members: Sequence[Run], key: str) -> dict[int, float]:
    by_seed: dict[int, list[float]] = defaultdict(list)
    for run in members:
        by_seed[run.seed].append(run.metrics.get(key, math.nan))
    return {seed: statistics.fmean(values) for seed, values in sorted(by_seed.items())}


def aggregate(runs: Sequence[Run]) -> list[Row]:
    """One row per (scenario, method, variant), sorted by scenario then method."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.scenario, run.method, run.variant)].append(run)
    rows = []
    for (scenario, method, variant), members in sorted(groups.items()):
        stats = {c.key: Stat.of(run.metrics.get(c.key, math.nan) for run in members) for c in COLUMNS}
        per_task = [task_scores(run.results) for run in members]
        names = sorted({t for scores in per_task for t in scores})
        labels = {run.uses_task_labels for run in members}
        rows.append(
            Row(
                scenario,
                method,
                variant,
                sorted(run.seed for run in members),
                stats,
                method_name=members[0].method_name,
                # Runs of one group share their settings; a mix (or an unknown method) is not label-free.
                uses_task_labels=labels.pop() if len(labels) == 1 else (True if True in labels else None),
                per_seed={c.key: _per_seed(members, c.key) for c in COLUMNS},
                tasks={
                    t: {v: Stat.of(s.get(t, {}).get(v, math.nan) for s in per_task) for v in TASK_VIEWS} for t in names
                },
                examples={t: Stat.of(s.get(t, {}).get("examples", math.nan) for s in per_task).mean for t in names},
            )
        )
    return rows


def relative_gain(value: float, reference: float) -> float:
    """``(value - reference) / |reference|``; NaN when undefined."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return math.nan
    return (value - reference) / abs(reference)


def reference_row(rows: Sequence[Row], row: Row, reference: str) -> Row | None:
    """The reference method's row for ``row``: same scenario and variant, else same scenario, no variant."""
    for variant in (row.variant, ""):
        for other in rows:
            if other.scenario == row.scenario and other.method == reference and other.variant == variant:
                return other
    return None


def gains(rows: Sequence[Row], row: Row, reference: str) -> dict[str, float]:
    """Relative gain of ``row``'s mean scores over the reference method's."""
    ref = reference_row(rows, row, reference)
    return {key: relative_gain(row.stats[key].mean, ref.stats[key].mean) if ref else math.nan for key in GAIN_METRICS}


def format_value(value: float, kind: str) -> str:
    spec = ",.0f" if kind in ("bytes", "count") else ".3f"
    return format(value, spec)


def format_stat(stat: Stat, kind: str) -> str:
    """``mean ± std`` (``-`` without values; no ± for a single run, nor for a constant byte or step count)."""
    if stat.n == 0:
        return "-"
    text = format_value(stat.mean, kind)
    if math.isfinite(stat.std) and not (kind in ("bytes", "count") and stat.std == 0):
        text += f" ± {format_value(stat.std, kind)}"
    return text


def format_gain(gain: float) -> str:
    return "-" if not math.isfinite(gain) else f"{100 * gain:+.1f}%"


def ordered(rows: Sequence[Row], scenario: str, reference: str, proposed: str) -> list[Row]:
    """A scenario's rows: the proposed method, the reference, then the others in name order."""
    members = [row for row in rows if row.scenario == scenario]
    return sorted(members, key=lambda r: (r.method_name != proposed, r.method != reference, r.method, r.variant))


def filled(members: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """The ``keys`` some row has a value for (a scenario without held-out tasks has no held-out column)."""
    return [key for key in keys if any(row.stats[key].n for row in members)]


def scores_table(members: Sequence[Row], all_rows: Sequence[Row], reference: str) -> str:
    """Scores (mean ± std over seeds) and relative gains of the mean over ``reference``."""
    keys = filled(members, SCORE_TABLE)
    gain_keys = [k for k in GAIN_METRICS if k in keys]
    header = ["method", "label-free", "seeds", *(COLUMN[k].title for k in keys)]
    header += [f"{COLUMN[k].title} vs {reference}" for k in gain_keys]
    lines = [line(header), line(["---"] * len(header))]
    for row in members:
        cells = [row.label, row.label_free, ",".join(map(str, row.seeds))]
        cells += [format_stat(row.stats[k], COLUMN[k].kind) for k in keys]
        gain = gains(all_rows, row, reference)
        cells += ["ref" if row.method == reference else format_gain(gain[k]) for k in gain_keys]
        lines.append(line(cells))
    return "\n".join(lines)


def metrics_table(members: Sequence[Row], keys: Sequence[str], only_filled: bool = False) -> str:
    """Mean ± std of ``keys`` per row; with ``only_filled``, only rows and columns that have values ("" if none)."""
    if only_filled:
        keys = filled(members, keys)
        members = [row for row in members if any(row.stats[k].n for k in keys)]
        if not members:
            return ""
    header = ["method", *(COLUMN[k].title for k in keys)]
    lines = [line(header), line(["---"] * len(header))]
    lines += [line([row.label, *(format_stat(row.stats[k], COLUMN[k].kind) for k in keys)]) for row in members]
    return "\n".join(lines)


def line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def row_to_json(rows: Sequence[Row], row: Row, reference: str) -> dict[str, object]:
    """A row as JSON-ready dicts (NaN stays NaN): every metric's mean, std, n and per-seed values."""
    return {
        "scenario": row.scenario,
        "method": row.method,
        "method_name": row.method_name,
        "variant": row.variant,
        "label": row.label,
        "seeds": row.seeds,
        "uses_task_labels": row.uses_task_labels,
        **{
            key: {**s.to_json(), "per_seed": {str(seed): v for seed, v in row.per_seed[key].items()}}
            for key, s in row.stats.items()
        },
        "gain": dict(gains(rows, row, reference)),
        "tasks": {
            task: {**{view: s.to_json() for view, s in views.items()}, "examples": row.examples[task]}
            for task, views in row.tasks.items()
        },
    }
