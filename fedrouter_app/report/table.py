"""Aggregation over seeds and the Markdown comparison table.

Runs are grouped by (scenario, method, variant); each metric is summarised by
its mean and sample standard deviation over the group's runs (seeds), and
score metrics also by their relative gain over a reference method (FedIT by
default) in the same scenario.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedrouter_app.report.runs import Run

# (metric key, column header, kind): kind "score" gets a gain column, "bytes" integer formatting.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("own", "own tasks (P)", "score"),
    ("other", "others' tasks", "score"),
    ("all", "all tasks (TTP)", "score"),
    ("seen", "seen tasks", "score"),
    ("unseen", "unseen tasks", "score"),
    ("loss", "eval loss", "loss"),
    ("routing", "routing acc", "score"),
    ("up", "bytes up /client-round", "bytes"),
    ("down", "bytes down /client-round", "bytes"),
)
GAIN_METRICS = ("own", "all", "unseen")


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


@dataclass
class Row:
    """One (scenario, method, variant) group of runs."""

    scenario: str
    method: str
    variant: str
    seeds: list[int]
    stats: dict[str, Stat]

    @property
    def label(self) -> str:
        return f"{self.method} [{self.variant}]" if self.variant else self.method


def aggregate(runs: Sequence[Run]) -> list[Row]:
    """One row per (scenario, method, variant), sorted by scenario then method."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.scenario, run.method, run.variant)].append(run)
    rows = []
    for (scenario, method, variant), members in sorted(groups.items()):
        stats = {key: Stat.of(run.metrics.get(key, math.nan) for run in members) for key, _, _ in COLUMNS}
        rows.append(Row(scenario, method, variant, sorted(run.seed for run in members), stats))
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


def format_stat(stat: Stat, kind: str) -> str:
    """``mean ± std`` (``-`` without values; no ± for a single run)."""
    if stat.n == 0:
        return "-"
    spec = ",.0f" if kind == "bytes" else ".3f"
    text = format(stat.mean, spec)
    if math.isfinite(stat.std) and not (kind == "bytes" and stat.std == 0):
        text += f" ± {format(stat.std, spec)}"
    return text


def format_gain(gain: float) -> str:
    return "-" if not math.isfinite(gain) else f"{100 * gain:+.1f}%"


def markdown_tables(rows: Sequence[Row], reference: str) -> str:
    """One Markdown table per scenario: mean ± std over seeds, and gains over ``reference``."""
    out = []
    for scenario in sorted({row.scenario for row in rows}):
        members = [row for row in rows if row.scenario == scenario]
        # The reference first, then the others in name order.
        members.sort(key=lambda r: (r.method != reference, r.method, r.variant))
        header = ["method", "seeds", *(title for _, title, _ in COLUMNS)]
        header += [f"{key} vs {reference}" for key in GAIN_METRICS]
        lines = [f"### Scenario `{scenario}`", "", _line(header), _line(["---"] * len(header))]
        for row in members:
            cells = [row.label, ",".join(map(str, row.seeds))]
            cells += [format_stat(row.stats[key], kind) for key, _, kind in COLUMNS]
            gain = gains(rows, row, reference).values()
            cells += ["ref" if row.method == reference else format_gain(g) for g in gain]
            lines.append(_line(cells))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def rows_to_json(rows: Sequence[Row], reference: str) -> list[dict[str, object]]:
    """The table as JSON-ready dicts (NaN stays NaN)."""
    return [
        {
            "scenario": row.scenario,
            "method": row.method,
            "variant": row.variant,
            "seeds": row.seeds,
            **{key: {"mean": s.mean, "std": s.std, "n": s.n} for key, s in row.stats.items()},
            "gain": {key: g for key, g in gains(rows, row, reference).items()},
        }
        for row in rows
    ]
