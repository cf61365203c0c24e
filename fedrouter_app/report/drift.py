"""Scores before and after the drift round of ``scenario=drift`` runs, per round and method.

    python -m fedrouter_app.report.drift outputs/sweeps/drift [--out drift.json]

Reads every run under the given directories (a sweep such as ``sweep=drift``)
whose scenario has a drift; other runs are listed as skipped. A round's score
is the project's own-task score (as ``own_mean`` in ``results.json``): each
task's score pooled over the clients that hold it, weighted by test examples,
then the mean over tasks. It is given over every client (``all``), over the
clients whose data drift (``drifting``; from the drift round on they hold, and
are tested on, their new tasks) and over the others (``staying``). Runs are
grouped by method variant, the ``method=`` choice (FedRouter with
``method.drift_check=true`` but no preset of its own is labelled
``fedrouter+drift_check``), and averaged over seeds (mean and standard
deviation). Each variant also gets the score of the last evaluated round before
the drift (``before``), of the drift round (``at``) and of the last round
(``final``), and, for FedRouter, how many clients registered again per round.
The tables are printed; every number is written as JSON (``--out``, default
``<first directory>/drift_report.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedrouter_app.data.partition import drifting_clients, first_drift_round
from fedrouter_app.report.runs import Run, find, load_run

GROUPS = ("all", "drifting", "staying")
POINTS = ("before", "at", "final")
REPORT_FILE = "drift_report.json"


def own_score(clients: Mapping[str, Any], members: Iterable[int] | None = None) -> float:
    """Own-task score of one evaluation over ``members`` (every client when None); NaN if none evaluated.

    ``clients`` is a round's ``evaluate.clients`` from ``results.json``: per
    client, ``tasks`` maps each task to its metrics (``score``, ``n``, ``own``).
    """
    wanted = None if members is None else {str(c) for c in members}
    pooled: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for client, evaluation in clients.items():
        if wanted is not None and client not in wanted:
            continue
        for task, m in evaluation.get("tasks", {}).items():
            n = float(m.get("n", 0.0))
            if m.get("own", 1.0) >= 0.5 and n > 0 and math.isfinite(m.get("score", math.nan)):
                pooled[task][0] += n * float(m["score"])
                pooled[task][1] += n
    scores = [total / n for total, n in pooled.values()]
    return sum(scores) / len(scores) if scores else math.nan


def drift_of(config: Mapping[str, Any]) -> tuple[int, tuple[int, ...]] | None:
    """The drift round and the drifting clients of a run's configuration; None without a drift."""
    drift = (config.get("scenario") or {}).get("drift")
    if not drift:
        return None
    num_clients = int(config["num_clients"])
    first = first_drift_round(drift.get("round"), int(config["num_rounds"]))
    return first, drifting_clients(int(config["seed"]), num_clients, float(drift["fraction"]))


def variant_label(run: Run) -> str:
    """The ``method=`` choice; FedRouter checking for drift without a preset of its own gets ``+drift_check``."""
    method = run.config.get("method") or {}
    if method.get("drift_check") and run.method == run.method_name:
        return f"{run.method}+drift_check"
    return run.method


def run_curve(run: Run) -> dict[str, Any]:
    """One run's per-round scores by group, its drift round and drifting clients, and its re-registrations."""
    drift = drift_of(run.config)
    if drift is None:
        raise ValueError(f"{run.path}: scenario {run.scenario!r} has no drift")
    first, movers = drift
    staying = [c for c in range(int(run.config["num_clients"])) if c not in movers]
    rounds: dict[int, dict[str, float]] = {}
    reregistered: dict[int, int] = {}
    for r in run.results.get("rounds", []):
        clients = r.get("evaluate", {}).get("clients") or {}
        if clients:
            rounds[int(r["round"])] = {
                "all": own_score(clients),
                "drifting": own_score(clients, movers),
                "staying": own_score(clients, staying),
            }
        again = r.get("strategy", {}).get("train", {}).get("reregistered")
        if again:
            reregistered[int(r["round"])] = len(again)
    return {"drift_round": first, "drifting": list(movers), "rounds": rounds, "reregistered": reregistered}


def points(rounds: Mapping[int, Mapping[str, float]], first: int) -> dict[str, int | None]:
    """The rounds behind ``before`` (last evaluated before ``first``), ``at`` (``first``) and ``final`` (last)."""
    evaluated = sorted(rounds)
    earlier = [r for r in evaluated if r < first]
    return {
        "before": earlier[-1] if earlier else None,
        "at": first if first in rounds else None,
        "final": evaluated[-1] if evaluated else None,
    }


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation of the finite ``values`` (NaN where undefined), and how many."""
    finite = [v for v in values if math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else math.nan,
        "std": statistics.stdev(finite) if len(finite) > 1 else math.nan,
        "n": len(finite),
    }


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """Per method variant: seeds, per-round scores by group over seeds, before/at/final, re-registrations."""
    curves: dict[str, list[tuple[Run, dict[str, Any]]]] = defaultdict(list)
    for run in runs:
        curves[variant_label(run)].append((run, run_curve(run)))
    out: dict[str, Any] = {}
    for label, members in sorted(curves.items()):
        firsts = sorted({curve["drift_round"] for _, curve in members})
        rounds = sorted({r for _, curve in members for r in curve["rounds"]})
        per_round = {
            str(r): {
                g: mean_std([curve["rounds"][r][g] for _, curve in members if r in curve["rounds"]]) for g in GROUPS
            }
            for r in rounds
        }
        marks = {
            point: {
                g: mean_std(
                    [
                        curve["rounds"][at][g]
                        for _, curve in members
                        if (at := points(curve["rounds"], curve["drift_round"])[point]) is not None
                    ]
                )
                for g in GROUPS
            }
            for point in POINTS
        }
        again: dict[int, list[int]] = defaultdict(list)
        for _, curve in members:
            for r, n in curve["reregistered"].items():
                again[r].append(n)
        out[label] = {
            "seeds": sorted(run.seed for run, _ in members),
            "runs": [str(run.path) for run, _ in members],
            "drift_rounds": firsts,
            "drifting": {str(run.seed): curve["drifting"] for run, curve in members},
            "rounds": per_round,
            **marks,
            "reregistered": {str(r): sum(ns) / len(members) for r, ns in sorted(again.items())},
        }
    return out


def format_tables(summary: Mapping[str, Any]) -> str:
    """Plain-text tables: per group, each variant's score per round and before/at/final (mean over seeds)."""
    rounds = sorted({int(r) for entry in summary.values() for r in entry["rounds"]})
    firsts = sorted({r for entry in summary.values() for r in entry["drift_rounds"]})
    width = max([len(label) for label in summary] + [7])
    lines = [f"drift from round {', '.join(map(str, firsts))}; own-task score, mean over seeds"]
    for group in GROUPS:
        header = f"{group:<{width}}  seeds" + "".join(f"{'r' + str(r):>8}" for r in rounds)
        header += "".join(f"{p:>8}" for p in POINTS)
        lines += ["", header, "-" * len(header)]
        for label, entry in summary.items():
            cells = [entry["rounds"].get(str(r), {}).get(group, {}).get("mean", math.nan) for r in rounds]
            cells += [entry[p][group]["mean"] for p in POINTS]
            lines.append(f"{label:<{width}}  {len(entry['seeds']):>5}" + "".join(f"{v:>8.3f}" for v in cells))
    again = {label: entry["reregistered"] for label, entry in summary.items() if entry["reregistered"]}
    if again:
        lines += ["", "clients registered again (mean over seeds), by round:"]
        lines += [
            f"  {label}: " + ", ".join(f"r{r} {n:g}" for r, n in counts.items()) for label, counts in again.items()
        ]
    return "\n".join(lines)


def build(paths: Sequence[Path]) -> dict[str, Any]:
    """The drift report of the runs under ``paths``: ``variants`` (see :func:`summarize`) and ``skipped`` runs."""
    found, _ = find(list(paths))
    runs, skipped = [], []
    for path in found:
        run = load_run(path)
        (runs if drift_of(run.config) is not None else skipped).append(run)
    if not runs:
        raise ValueError(f"no run with a drifting scenario (scenario=drift) under {', '.join(map(str, paths))}")
    return {"variants": summarize(runs), "skipped": [str(run.path) for run in skipped]}


def main(argv: list[str] | None = None, prog: str = "python -m fedrouter_app.report.drift") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep, job or run directories")
    parser.add_argument("--out", type=Path, help=f"JSON file to write (default: <first path>/{REPORT_FILE})")
    parser.add_argument("--markdown", type=Path, help="also write the tables as a Markdown page (e.g. for the docs)")
    args = parser.parse_args(argv)
    try:
        report = build(args.paths)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent) / REPORT_FILE
    out.write_text(json.dumps(report, indent=1, allow_nan=True))
    tables = format_tables(report["variants"])
    print(tables)
    if args.markdown:
        command = " ".join([prog, *(argv if argv is not None else sys.argv[1:])])
        args.markdown.write_text(
            f"# Data drift: per-round scores\n\nGenerated by `{command}` from the runs' results; every number, per "
            f"seed too, is in `{out.name}`.\n\n```\n{tables}\n```\n"
        )
    if report["skipped"]:
        print(f"\nskipped {len(report['skipped'])} run(s) without a drift")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
