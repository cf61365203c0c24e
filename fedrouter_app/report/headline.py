"""The headline comparison: one column per claim, read from a report's ``report.json``.

A comparison's front page shows each method's score in the setting that carries
each claim (task interference, other clients' tasks, held-out tasks) and the
proposed method's paired differences: against the comparators its sweep
declared before the runs, each with its Holm-corrected verdict (holds, does not
hold, reversed), where the report has a declaration; else against the
reference, the best baseline and the best label-free baseline. The tables are
generated from the JSON a report writes, and can be put into a Markdown file
between two markers, so that numbers in documents are never copied by hand::

    python -m fedrouter_app.report.headline docs/real_compare/report.json \\
        --claim dual:all --claim cross_task:other_clients --claim unseen:held_out --into README.md

replaces what lies between ``<!-- headline:start -->`` and ``<!-- headline:end -->``
in README.md (``--marker`` names another pair). Without ``--claim``, the
declared claims are shown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from fedrouter_app.markers import splice_file

TITLES = {
    "own": "own tasks",
    "other_clients": "other clients' tasks",
    "held_out": "held-out tasks",
    "all": "all tasks",
}
COMPARATORS = (
    ("reference", "vs {name}"),
    ("best_baseline", "vs the best baseline"),
    ("best_label_free", "vs the best label-free baseline"),
)


def _cell(stat: dict[str, Any] | None, best: bool = False) -> str:
    if not stat or not isinstance(stat.get("mean"), int | float) or not math.isfinite(stat["mean"]):
        return "-"
    text = f"{stat['mean']:.3f}"
    if isinstance(stat.get("std"), int | float) and math.isfinite(stat["std"]):
        text += f" ± {stat['std']:.3f}"
    return f"**{text}**" if best else text


def _difference(diff: dict[str, Any] | None, mark: bool = True) -> str:
    if not diff or not math.isfinite(diff.get("mean", math.nan)):
        return "-"
    text = f"{diff['mean']:+.3f}"
    if diff.get("method") == "bootstrap":
        text += f" [{diff['low']:+.3f}, {diff['high']:+.3f}]"
    elif math.isfinite(diff.get("half_width", math.nan)):
        text += f" ± {diff['half_width']:.3f}"
    return text + (" *" if mark and diff.get("excludes_zero") else "")


def declared_lines(report: dict[str, Any], claims: list[tuple[str, str]], by_key: dict) -> list[str]:
    """The proposed method against each declared comparator, with the verdict of each declared claim."""
    declaration = report["declaration"]
    proposed = declaration["proposed"]
    verdicts = {(v["scenario"], v["column"], v["comparator"]): v for v in report.get("verdicts", [])}
    lines = [
        "",
        f"`{proposed}` minus each comparator declared before the runs, paired by seed and test item (mean "
        f"[95% bootstrap interval], or ± the Student-t half-width where predictions were missing); verdict "
        f"Holm-corrected over the {len(verdicts)} declared comparisons at alpha = {report.get('alpha', 0.05):g} "
        "(`*` on an undeclared claim: its interval excludes 0, uncorrected):",
        "",
    ]
    head = ["comparator", *(f"{TITLES[column]} (`{scenario}`)" for scenario, column in claims)]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in declaration["comparators"]:
        label_free = " (label-free baseline)" if name == declaration.get("label_free_baseline") else ""
        cells = [f"vs `{name}`{label_free}"]
        for scenario, column in claims:
            declared = ((by_key.get((scenario, proposed)) or {}).get("differences") or {}).get("declared") or {}
            verdict = verdicts.get((scenario, column, name))
            # A declared claim shows its corrected verdict, not the uncorrected `*`.
            cell = _difference((declared.get(name) or {}).get(column), mark=verdict is None)
            cells.append(cell + (f" **{verdict['verdict']}**" if verdict else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline(report: dict[str, Any], claims: list[tuple[str, str]], cost_scenario: str | None = None) -> str:
    """Markdown: methods x claims (mean ± std over seeds), then the proposed method's paired differences.

    Parameters
    ----------
    report : dict
        A ``report.json``.
    claims : list of (scenario, column)
        The settings and the score column each is judged by, e.g. ``("unseen", "held_out")``.
    cost_scenario : str, optional
        Scenario whose training steps and bytes per client-round are shown (default: the first claim's).
    """
    rows = report["rows"]
    proposed, reference = report.get("proposed", "fedrouter"), report.get("reference", "fedit")
    if not claims and report.get("declaration"):
        claims = [tuple(c.split(":", 1)) for c in report["declaration"]["claims"]]  # type: ignore[misc]
    if not claims:
        raise ValueError("no claims: name them (--claim scenario:column) or report a sweep that declares them")
    labels = list(dict.fromkeys(r["label"] for r in rows if any(r["scenario"] == s for s, _ in claims)))
    by_key = {(r["scenario"], r["label"]): r for r in rows}
    cost_scenario = cost_scenario or claims[0][0]
    best = {}
    for scenario, column in claims:
        means = {
            label: by_key[(scenario, label)][column]["mean"]
            for label in labels
            if (scenario, label) in by_key and math.isfinite(by_key[(scenario, label)][column]["mean"])
        }
        best[(scenario, column)] = max(means, key=means.get) if means else None
    seeds, first = [], {}
    for scenario, column in claims:
        first.setdefault(scenario, column)
    for scenario, column in first.items():  # one entry per scenario, in the claims' order
        counts = sorted({int(r[column]["n"]) for r in rows if r["scenario"] == scenario and r[column].get("n")})
        text = "none" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        seeds.append(f"`{scenario}` {text}")
    head = ["method", "label-free"]
    head += [f"{TITLES[column]} (`{scenario}`)" for scenario, column in claims]
    head += [f"train steps /client-round (`{cost_scenario}`)", f"bytes up /client-round (`{cost_scenario}`)"]
    lines = [
        f"Mean ± std over seeds (seeds per method: {', '.join(seeds)}); best of a column in bold.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for label in sorted(labels, key=lambda name: (name != proposed, name != reference, name)):
        any_row = next(by_key[(s, label)] for s, _ in [*claims, (cost_scenario, "")] if (s, label) in by_key)
        told = any_row.get("uses_task_labels")
        cells = [f"`{label}`", "?" if told is None else ("no" if told else "yes")]
        for scenario, column in claims:
            row = by_key.get((scenario, label))
            cells.append(_cell(row[column] if row else None, best[(scenario, column)] == label))
        cost = by_key.get((cost_scenario, label))
        steps, up = (cost["train_steps"]["mean"], cost["up"]["mean"]) if cost else (math.nan, math.nan)
        cells.append(f"{steps:.1f}" if math.isfinite(steps) else "-")
        cells.append(f"{up:,.0f}" if math.isfinite(up) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("declaration"):
        return "\n".join(lines + declared_lines(report, claims, by_key)) + "\n"
    differences = [d for r in rows for by_key in (r.get("differences") or {}).values() for d in by_key.values()]
    booted = any(isinstance(d, dict) and d.get("method") == "bootstrap" for d in differences)
    interval = "mean [95% bootstrap interval] or ± Student-t half-width" if booted else "mean ± 95% interval half-width"
    lines += ["", f"`{proposed}` minus each comparator, paired by seed ({interval}; `*`: excludes 0):", ""]
    head = ["comparator", *(f"{TITLES[column]} (`{scenario}`)" for scenario, column in claims)]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, title in COMPARATORS:
        cells = [title.format(name=f"`{reference}`")]
        for scenario, column in claims:
            diff = ((by_key.get((scenario, proposed)) or {}).get("differences") or {}).get(key, {}).get(column)
            against = f" (`{diff['against']}`)" if diff and key != "reference" and diff.get("against") else ""
            cells.append(_difference(diff) + against)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m fedrouter_app.report.headline") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.json")
    parser.add_argument(
        "--claim",
        action="append",
        default=[],
        help="scenario:column, e.g. unseen:held_out (default: the declared ones)",
    )
    parser.add_argument("--cost-scenario", help="scenario whose cost columns are shown (default: the first claim's)")
    parser.add_argument("--into", type=Path, help="Markdown file to put the tables into (between the markers)")
    parser.add_argument("--marker", default="headline", help="marker name (default: headline)")
    args = parser.parse_args(argv)
    claims = []
    for claim in args.claim:
        scenario, _, column = claim.partition(":")
        if column not in TITLES:
            print(f"error: unknown column {column!r} in --claim {claim}; valid: {', '.join(TITLES)}", file=sys.stderr)
            return 2
        claims.append((scenario, column))
    try:
        tables = headline(json.loads(args.report.read_text()), claims, args.cost_scenario)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.into is None:
        print(tables, end="")
        return 0
    try:
        splice_file(args.into, args.marker, tables)
    except ValueError as err:
        print(f"error: {args.into}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
