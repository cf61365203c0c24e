"""Paired differences between methods, and against which rows they are taken.

Runs with the same seed share data, partition and initialisation, so the
difference of two methods seed by seed removes what the seed does to both.
For each row and score column the report gives the mean over seeds of those
differences and an interval: the paired two-level bootstrap over seeds and
test items where the runs saved their predictions
(:mod:`fedrouter_app.report.bootstrap`), else the two-sided Student-t interval
over seeds (n - 1 degrees of freedom, n the seeds both rows have) computed
here. The comparators: the reference method (FedIT by default), and then
either the comparators a declaration fixed before the runs
(:mod:`fedrouter_app.report.declaration`; the proposed method against each) or,
without one, the best baseline (the row with the highest mean in that column
among the methods other than the proposed one) and the best label-free
baseline (the same among methods not told the true task of a sample: the
strategies' ``uses_task_labels`` flag), picked after the fact.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scipy import stats

from fedrouter_app.report.table import COLUMN, Row, line, reference_row

if TYPE_CHECKING:
    from fedrouter_app.report.declaration import Declaration

CONFIDENCE = 0.95
DIFF_COLUMNS = ("own", "other_clients", "held_out", "all")
COMPARATORS = ("reference", "best_baseline", "best_label_free")
# Kind of a declared comparator's differences: "declared:<method>" (report.json nests them under "declared").
DECLARED = "declared"


@dataclass(frozen=True)
class Difference:
    """Mean over seeds of ``row - against``, its confidence interval and two-sided p-value.

    Student-t (``method``): ``mean ± half_width``, NaN with fewer than two
    pairs (no interval), ``mean`` too with none. Bootstrap: ``interval`` is the
    percentile interval (not symmetric; ``half_width`` is half its width).
    ``note`` says why a difference fell back to Student-t.
    """

    against: str
    mean: float
    half_width: float
    n: int
    per_seed: dict[int, float]
    interval: tuple[float, float] | None = None
    method: str = "student-t"
    p_value: float = math.nan
    note: str = ""
    resamples: int = 0

    @property
    def low(self) -> float:
        return self.interval[0] if self.interval else self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.interval[1] if self.interval else self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (False without an interval)."""
        return math.isfinite(self.half_width) and (self.low > 0 or self.high < 0)

    def to_json(self) -> dict[str, object]:
        return {
            "against": self.against,
            "mean": self.mean,
            "half_width": self.half_width,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "excludes_zero": self.excludes_zero,
            "per_seed": {str(seed): d for seed, d in self.per_seed.items()},
            "method": self.method,
            "p_value": self.p_value,
            **({"resamples": self.resamples} if self.resamples else {}),
            **({"note": self.note} if self.note else {}),
        }


def t_half_width(differences: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the two-sided Student-t interval of the mean of ``differences``; NaN below two values."""
    n = len(differences)
    if n < 2:
        return math.nan
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return quantile * statistics.stdev(differences) / math.sqrt(n)


def t_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test that the mean of ``differences`` is 0; NaN below two values."""
    n = len(differences)
    if n < 2:
        return math.nan
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), df=n - 1))


def paired_difference(
    values: Mapping[int, float], against: Mapping[int, float], label: str, confidence: float = CONFIDENCE
) -> Difference:
    """``values - against`` over the seeds where both are finite, as a :class:`Difference`."""
    per_seed = {
        seed: values[seed] - against[seed]
        for seed in sorted(values.keys() & against.keys())
        if math.isfinite(values[seed]) and math.isfinite(against[seed])
    }
    diffs = list(per_seed.values())
    mean = statistics.fmean(diffs) if diffs else math.nan
    return Difference(label, mean, t_half_width(diffs, confidence), len(diffs), per_seed, p_value=t_p_value(diffs))


# How a row is compared with another in a column: Student-t (below) or the bootstrap's PairedBootstrap.compare.
Compare = Callable[[Row, Row, str], Difference]


def student_t(row: Row, other: Row, key: str) -> Difference:
    """``row - other`` in ``key`` with the Student-t interval over seeds."""
    return paired_difference(row.per_seed[key], other.per_seed[key], other.label)


def _pool(rows: Sequence[Row], row: Row, keep: Callable[[Row], bool]) -> list[Row]:
    """Candidates for ``row``'s comparator: same scenario and ``keep``; its own variant if any has it, else none."""
    candidates = [r for r in rows if r.scenario == row.scenario and keep(r)]
    same = [r for r in candidates if r.variant == row.variant]
    return same or [r for r in candidates if not r.variant]


def best(candidates: Sequence[Row], key: str) -> Row | None:
    """The candidate with the highest mean in ``key`` (ties: first by label); None if none has a value."""
    scored = [r for r in candidates if math.isfinite(r.stats[key].mean)]
    return max(sorted(scored, key=lambda r: r.label), key=lambda r: r.stats[key].mean, default=None)


def is_baseline(row: Row, proposed: str, label_free: bool) -> bool:
    """Whether ``row`` may be a best baseline (label-free: one whose clients are not told the tasks)."""
    return row.method_name != proposed and (row.uses_task_labels is False or not label_free)


def scenario_best(rows: Sequence[Row], scenario: str, proposed: str, label_free: bool) -> dict[str, object]:
    """The best (label-free) baseline of each score column among ``scenario``'s rows without a variant."""
    pool = [r for r in rows if r.scenario == scenario and not r.variant and is_baseline(r, proposed, label_free)]
    return {
        key: {"label": row.label, "mean": row.stats[key].mean} if (row := best(pool, key)) else None
        for key in DIFF_COLUMNS
    }


def comparator_rows(
    rows: Sequence[Row], row: Row, reference: str, proposed: str, declaration: Declaration | None = None
) -> dict[str, dict[str, Row | None]]:
    """For ``row``, the row each comparator names, per score column.

    With a ``declaration``: the reference for every row, and each declared
    comparator for rows of the proposed method (same variant, else none); no
    best baseline is picked.
    """
    if declaration is not None:
        out = {"reference": dict.fromkeys(DIFF_COLUMNS, reference_row(rows, row, reference))}
        if row.method == declaration.proposed:
            for name in declaration.comparators:
                out[f"{DECLARED}:{name}"] = dict.fromkeys(DIFF_COLUMNS, reference_row(rows, row, name))
        return out
    baselines = _pool(rows, row, lambda r: is_baseline(r, proposed, label_free=False))
    label_free = _pool(rows, row, lambda r: is_baseline(r, proposed, label_free=True))
    ref = reference_row(rows, row, reference)
    return {
        "reference": dict.fromkeys(DIFF_COLUMNS, ref),
        "best_baseline": {key: best(baselines, key) for key in DIFF_COLUMNS},
        "best_label_free": {key: best(label_free, key) for key in DIFF_COLUMNS},
    }


def differences(
    rows: Sequence[Row],
    row: Row,
    reference: str,
    proposed: str,
    declaration: Declaration | None = None,
    compare: Compare = student_t,
) -> dict[str, dict[str, Difference]]:
    """``row``'s paired differences per comparator and score column (absent where there is no comparator)."""
    out: dict[str, dict[str, Difference]] = {}
    for kind, by_key in comparator_rows(rows, row, reference, proposed, declaration).items():
        out[kind] = {key: compare(row, other, key) for key, other in by_key.items() if other is not None}
    return out


def format_interval(diff: Difference) -> str:
    """``+0.120 ± 0.031`` (Student-t) or ``+0.120 [+0.085, +0.160]`` (bootstrap)."""
    if diff.interval is not None:
        return f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
    if diff.n == 1:
        return f"{diff.mean:+.3f} (1 seed)"
    return f"{diff.mean:+.3f} ± {diff.half_width:.3f}"


def format_difference(diff: Difference | None, itself: bool, mark: str) -> str:
    """``+0.120 ± 0.031 *`` or ``+0.120 [+0.085, +0.160] *`` (``*``: the interval excludes 0); ``mark`` for the
    comparator itself."""
    if diff is None or diff.n == 0:
        return "-"
    if itself:
        return mark
    return format_interval(diff) + (" *" if diff.excludes_zero else "")


def difference_tables(
    rows: Sequence[Row],
    members: Sequence[Row],
    keys: Sequence[str],
    reference: str,
    proposed: str,
    declaration: Declaration | None = None,
    compare: Compare = student_t,
) -> str:
    """The paired-difference tables of one scenario's ``members`` (in display order), and how they were computed.

    Against the reference, every row; then, with a ``declaration``, the
    proposed method against each declared comparator, else every row against
    the best and the best label-free baseline.
    """
    titles = {
        "reference": f"against `{reference}`",
        "best_baseline": f"against the best baseline (highest mean among methods other than `{proposed}`, per column)",
        "best_label_free": "against the best label-free baseline (as above, among methods not told the task of a "
        "sample)",
    }
    marks = {"reference": "ref", "best_baseline": "best", "best_label_free": "best"}
    by_row = {row.label: differences(rows, row, reference, proposed, declaration, compare) for row in members}
    out = []
    for kind in ("reference",) if declaration is not None else COMPARATORS:
        columns = []
        for key in keys:
            against = {d.against for diffs in by_row.values() if (d := diffs[kind].get(key))}
            # The comparator goes in the header when every row has the same one, else into each cell.
            columns.append((key, against.pop() if len(against) == 1 else None))
        header = ["method", "label-free", "pairs"]
        header += [f"{COLUMN[k].title} vs `{a}`" if a else COLUMN[k].title for k, a in columns]
        lines = [f"Paired differences {titles[kind]}:", "", line(header), line(["---"] * len(header))]
        for row in members:
            diffs = by_row[row.label][kind]
            cells = [row.label, row.label_free, _pairs(diffs[k] for k in keys if k in diffs)]
            for key, against in columns:
                diff = diffs.get(key)
                itself = diff is not None and diff.against == row.label
                cell = format_difference(diff, itself, marks[kind])
                if diff is not None and diff.n and not itself and against is None:
                    cell += f" vs `{diff.against}`"
                cells.append(cell)
            lines.append(line(cells))
        out.append("\n".join(lines))
    if declaration is not None:
        out += [declared_table(row, by_row[row.label], keys, declaration) for row in members if row.method == proposed]
    shown = [
        d for label, diffs in by_row.items() for by_key in diffs.values() for d in by_key.values() if d.against != label
    ]
    out.append(interval_note(shown))
    return "\n\n".join(part for part in out if part)


def declared_table(
    row: Row, diffs: Mapping[str, Mapping[str, Difference]], keys: Sequence[str], declaration: Declaration
) -> str:
    """``row`` (the proposed method) minus each declared comparator, one line per comparator."""
    header = ["comparator", "pairs", *(COLUMN[k].title for k in keys)]
    lines = [
        f"Paired differences of `{row.label}` against the comparators declared before the runs ({declaration.source}):",
        "",
        line(header),
        line(["---"] * len(header)),
    ]
    for name in declaration.comparators:
        by_key = diffs.get(f"{DECLARED}:{name}", {})
        title = f"`{name}`" + (" (label-free baseline)" if name == declaration.label_free_baseline else "")
        cells = [title, _pairs(by_key[k] for k in keys if k in by_key)]
        lines.append(line([*cells, *(format_difference(by_key.get(k), False, "") for k in keys)]))
    return "\n".join(lines)


def interval_note(diffs: Iterable[Difference]) -> str:
    """One line: how many intervals are bootstrap and which fell back to Student-t, and why."""
    counts = {"bootstrap": 0, "student-t": 0}
    reasons: dict[str, None] = {}
    for diff in diffs:
        if diff.n:
            counts[diff.method] += 1
            if diff.note:
                reasons[diff.note] = None
    if not counts["bootstrap"]:
        return "Intervals: Student-t over seeds (no run saved its predictions)." if counts["student-t"] else ""
    text = f"Intervals: paired bootstrap over seeds and test items ([low, high]) for {counts['bootstrap']} cells"
    if counts["student-t"]:
        shown = list(reasons)[:3]
        more = f"; {len(reasons) - 3} more" if len(reasons) > 3 else ""
        text += f"; Student-t over seeds (±) for {counts['student-t']} cells ({'; '.join(shown)}{more})"
    return text + "."


def _pairs(diffs: Iterable[Difference]) -> str:
    """Seeds paired, as ``3`` or ``2-3`` when columns differ."""
    counts = sorted({d.n for d in diffs if d.n})
    if not counts:
        return "-"
    return str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"


def differences_to_json(
    rows: Sequence[Row],
    row: Row,
    reference: str,
    proposed: str,
    declaration: Declaration | None = None,
    compare: Compare = student_t,
) -> dict[str, object]:
    """``row``'s differences as JSON: comparator -> column -> difference (None where there is no comparator).

    Declared comparators are nested: ``{"declared": {"<method>": {column: difference}}}``.
    """
    out: dict[str, object] = {}
    declared: dict[str, object] = {}
    for kind, by_key in differences(rows, row, reference, proposed, declaration, compare).items():
        entry = {key: (d.to_json() if (d := by_key.get(key)) else None) for key in DIFF_COLUMNS}
        if kind.startswith(DECLARED + ":"):
            declared[kind.split(":", 1)[1]] = entry
        else:
            out[kind] = entry
    if declared:
        out[DECLARED] = declared
    return out
