"""Verdicts on a declaration's claims, Holm-corrected over every (comparator, claim) pair.

A declaration (:mod:`fedrouter_app.report.declaration`) names the proposed
method, its comparators and its claims (scenario, column). Each (comparator,
claim) pair is one test of "the proposed method differs from the comparator
there", with the two-sided p-value of its paired difference (the bootstrap's,
or Student-t's where predictions are missing). The family is every declared
pair, so the chance that any verdict is a false "holds" or "reversed" stays
below ``alpha`` however many pairs are declared: Holm's step-down procedure
(sort the p-values, compare the k-th smallest with alpha / (m - k + 1), stop
at the first that fails), reported as adjusted p-values. A pair with no data
(a method missing from a setting) stays in the family with p = 1, so leaving
a run out never makes the other verdicts easier.

Verdicts: *holds* (adjusted p <= alpha and the proposed method is ahead),
*reversed* (adjusted p <= alpha and it is behind), *does not hold* (otherwise),
*no data* (no paired seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedrouter_app.report.declaration import Declaration
from fedrouter_app.report.paired import Compare, Difference, format_interval, student_t
from fedrouter_app.report.table import COLUMN, Row, line

ALPHA = 0.05
HOLDS, NOT_HOLD, REVERSED, NO_DATA = "holds", "does not hold", "reversed", "no data"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given (NaN counts as 1).

    The k-th smallest (k from 0) is multiplied by ``m - k`` and made at least
    the adjusted value before it, clipped to 1: a hypothesis is rejected at
    level alpha exactly when its adjusted p-value is at most alpha.
    """
    values = [1.0 if not math.isfinite(p) else p for p in p_values]
    m = len(values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: values[i])):
        running = max(running, min(1.0, (m - rank) * values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Verdict:
    """One declared (comparator, claim) pair: the difference, its Holm-adjusted p-value, the verdict."""

    scenario: str
    column: str
    comparator: str
    difference: Difference | None
    p_holm: float
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "column": self.column,
            "comparator": self.comparator,
            "difference": self.difference.to_json() if self.difference else None,
            "p_value": self.difference.p_value if self.difference else math.nan,
            "p_holm": self.p_holm,
            "verdict": self.verdict,
        }


def verdict_of(diff: Difference | None, p_holm: float, alpha: float = ALPHA) -> str:
    """The verdict of one pair given its Holm-adjusted p-value."""
    if diff is None or diff.n == 0 or not math.isfinite(diff.mean):
        return NO_DATA
    if p_holm <= alpha and diff.mean != 0:
        return HOLDS if diff.mean > 0 else REVERSED
    return NOT_HOLD


def judge(
    rows: Sequence[Row], declaration: Declaration, compare: Compare = student_t, alpha: float = ALPHA
) -> list[Verdict]:
    """Every declared pair's verdict, claims in declared order, comparators in declared order within each.

    The proposed method's row and each comparator's are the ones without a
    variant in the claim's scenario.
    """
    by_key = {(r.scenario, r.method): r for r in rows if not r.variant}
    pairs: list[tuple[str, str, str, Difference | None]] = []
    for scenario, column in declaration.claims:
        proposed = by_key.get((scenario, declaration.proposed))
        for name in declaration.comparators:
            other = by_key.get((scenario, name))
            diff = compare(proposed, other, column) if proposed is not None and other is not None else None
            pairs.append((scenario, column, name, diff if diff is None or diff.n else None))
    adjusted = holm([d.p_value if d is not None else 1.0 for *_, d in pairs])
    return [
        Verdict(scenario, column, name, diff, p, verdict_of(diff, p, alpha))
        for (scenario, column, name, diff), p in zip(pairs, adjusted, strict=True)
    ]


def verdict_table(verdicts: Sequence[Verdict], declaration: Declaration, alpha: float = ALPHA) -> str:
    """The declared claims as a Markdown table: difference, interval, p-values and verdict per pair."""
    header = ["claim (scenario: column)", "comparator", "difference [interval]", "p", "p (Holm)", "verdict"]
    lines = [
        f"Declared claims of `{declaration.proposed}` ({declaration.source}): each against each declared comparator, "
        f"{len(verdicts)} tests; Holm-corrected at alpha = {alpha:g} over all of them. *holds*: ahead with an "
        "adjusted p-value at most alpha; *reversed*: behind with one; *does not hold*: neither.",
        "",
        line(header),
        line(["---"] * len(header)),
    ]
    for v in verdicts:
        diff = v.difference
        claim = f"`{v.scenario}`: {COLUMN[v.column].title}"
        name = f"`{v.comparator}`" + (" (label-free)" if v.comparator == declaration.label_free_baseline else "")
        if diff is None:
            lines.append(line([claim, name, "-", "-", "-", v.verdict]))
            continue
        interval = format_interval(diff) + (" (t)" if diff.method != "bootstrap" else "")
        lines.append(line([claim, name, interval, _p(diff.p_value), _p(v.p_holm), f"**{v.verdict}**"]))
    return "\n".join(lines)


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


@dataclass(frozen=True)
class ViewComparison:
    """A reported view of the proposed method (``method:view``) against one other row in one claim."""

    view: str
    scenario: str
    column: str
    against: str
    difference: Difference | None

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "scenario": self.scenario,
            "column": self.column,
            "against": self.against,
            "difference": self.difference.to_json() if self.difference is not None else None,
        }


def compare_views(rows: Sequence[Row], declaration: Declaration, compare: Compare = student_t) -> list[ViewComparison]:
    """Each declared view against the proposed method and every comparator, in every claim (no correction).

    A view is scored on the very items of the proposed method's runs, so
    against the proposed method the difference is what the alternative
    scoring alone changes; against a comparator, whether it closes a gap.
    """
    by_key = {(r.scenario, r.method): r for r in rows if not r.variant}
    out = []
    for view in declaration.views:
        for scenario, column in declaration.claims:
            row = by_key.get((scenario, view))
            for name in (declaration.proposed, *declaration.comparators):
                other = by_key.get((scenario, name))
                diff = compare(row, other, column) if row is not None and other is not None else None
                out.append(ViewComparison(view, scenario, column, name, diff if diff is None or diff.n else None))
    return out


def view_table(comparisons: Sequence[ViewComparison], confidence: float) -> str:
    """The views' differences as a Markdown table, one line per (view, claim), one column per row compared."""
    against = list(dict.fromkeys(c.against for c in comparisons))
    header = ["row", "claim (scenario: column)", *(f"vs `{name}`" for name in against)]
    lines = [
        f"Alternative scorings of the proposed method's runs, each minus the row named, mean and "
        f"{confidence:.0%} interval; reported beside the declared claims, not part of their Holm family.",
        "",
        line(header),
        line(["---"] * len(header)),
    ]
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for c in comparisons:
        diff = c.difference
        text = "-" if diff is None else format_interval(diff) + (" (t)" if diff.method != "bootstrap" else "")
        cells.setdefault((c.view, c.scenario, c.column), {})[c.against] = text
    for (view, scenario, column), by_name in cells.items():
        claim = f"`{scenario}`: {COLUMN[column].title}"
        lines.append(line([f"`{view}`", claim, *(by_name.get(name, "-") for name in against)]))
    return "\n".join(lines)
