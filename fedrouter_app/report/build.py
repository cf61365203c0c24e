"""Assemble the report: load runs, aggregate, write Markdown, JSON and figures."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from fedrouter_app.report.bootstrap import RESAMPLES, SEED, PairedBootstrap
from fedrouter_app.report.declaration import Declaration, choose
from fedrouter_app.report.diagnosis import diagnoses, diagnosis_table
from fedrouter_app.report.paired import (
    CONFIDENCE,
    DIFF_COLUMNS,
    Compare,
    difference_tables,
    differences_to_json,
    scenario_best,
)
from fedrouter_app.report.runs import FailedJob, Run, assign_variants, find, load_job_failure, load_run, view_runs
from fedrouter_app.report.signal import signal, signal_table
from fedrouter_app.report.table import (
    COLUMNS,
    COST_TABLE,
    ROUTING_TABLE,
    Row,
    aggregate,
    filled,
    metrics_table,
    ordered,
    row_to_json,
    scores_table,
)
from fedrouter_app.report.tasks import describe, protocol, task_kinds, task_tables
from fedrouter_app.report.verdicts import ALPHA, compare_views, judge, verdict_table, view_table

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"

INTRO = """\
Every number is from the last evaluated round of a run. A client's score on a task is exact match for short
answers and ROUGE-L for generated sentences; a task's score pools the clients tested on it (weighted by their test
examples) and a column averages its tasks with equal weight. Cells are the mean ± sample standard deviation over
seeds. A run's seed fixes its data, partition and initialisation (and so its test items), so runs of two methods
with the same seed are paired: the paired tables give, per column, the mean over seeds of the per-seed difference
and its {confidence:.0%} interval. Where both runs of every paired seed saved their per-example predictions
(`predictions.jsonl`), the interval is a paired two-level bootstrap, shown as [low, high]: {resamples} resamples
(seeded) each draw the seeds with replacement and, within each drawn seed, the test items of each task with
replacement, score both methods on the same drawn items and recompute the column (mean over tasks of per-task mean
scores); the interval is the 2.5-97.5 percentile range, and the two-sided p-value twice the share of resampled
differences on the other side of 0. Otherwise it falls back to mean ± the half-width of the Student-t interval over
seeds (n - 1 degrees of freedom: with 3 seeds, 2), which ignores the test set's size; the note under each scenario's
tables says which cells fell back and why. `*` marks an interval that excludes 0, `ref` and `best` the comparator
itself. {comparators}
*Label-free*: the method is not told the task of a sample, in training or at test time, and must infer it (or
ignore it); methods that are told it (label-free = no) use the true task labels, as their papers assume.
*vs {reference}*: relative gain of the mean over `{reference}`."""


def definitions() -> str:
    """The meaning of every column, as a Markdown list."""
    return "\n".join(f"- *{c.title}*: {c.description}." for c in COLUMNS if c.key != "seen")


BEST_AFTER_THE_FACT = """The best baseline of a column is the method other than `{proposed}` with the highest mean in
it (among runs with the same swept setting, where a sweep varies one); the best label-free baseline the same among
label-free methods: both are picked after the runs, and the intervals are not corrected for the number of
comparisons, so read them as descriptions, not as tests."""
DECLARED = """The comparison was declared before the runs ({source}): `{proposed}` against {comparators}, on
{claims}; no best baseline is picked after the fact, and the claims' verdicts are Holm-corrected over every declared
(comparator, claim) pair (see *Declared claims*)."""


def comparators_text(declaration: Declaration | None, proposed: str) -> str:
    """The INTRO's sentence on comparators: declared ones, or the best baselines picked after the fact."""
    if declaration is None:
        return BEST_AFTER_THE_FACT.format(proposed=proposed)
    return DECLARED.format(
        source=declaration.source,
        proposed=declaration.proposed,
        comparators=", ".join(f"`{c}`" for c in declaration.comparators),
        claims=", ".join(f"`{s}`: {c}" for s, c in declaration.claims),
    )


def build_report(
    paths: Sequence[Path],
    out: Path,
    reference: str = "fedit",
    with_figures: bool = True,
    proposed: str | None = None,
    preset: Path | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    title: str = "Comparison report",
) -> Path:
    """Write ``report.md``, ``report.json`` and figures for the runs under ``paths``; return the Markdown path.

    ``title``: the report's first heading (the page title on the docs site).

    ``reference``: the method gains and the first paired table are against;
    ``proposed``: the method under study, left out of the best baselines
    (default: the declaration's, else ``fedrouter``); ``preset``: a sweep
    preset whose ``report:`` block declares the comparison (default: what the
    runs recorded); ``resamples`` and ``seed``: the bootstrap's.
    """
    run_dirs, job_files = find([Path(p) for p in paths])
    runs: list[Run] = []
    failed: list[FailedJob] = []
    running: list[Path] = []
    for path in tqdm(run_dirs, desc="reading runs", unit="run", disable=None):
        run = load_run(path)
        if run.status == "completed":
            runs.append(run)
        elif run.status == "running":
            running.append(path)  # a sweep still going: neither a result nor a failure yet
        else:
            error = str(run.results.get("run", {}).get("error", f"status {run.status}"))
            failed.append(FailedJob(path, list(run.results.get("run", {}).get("overrides", [])), error))
    failed_dirs = {f.path for f in failed} | {r.path for r in runs} | set(running)
    for job in job_files:
        failure = load_job_failure(job)
        # A job whose run directory is already listed (as a run or a failed run) is not counted twice.
        if failure and not any(d.is_relative_to(failure.path) for d in failed_dirs):
            failed.append(failure)
    if not runs:
        raise ValueError(f"no completed runs under {', '.join(map(str, paths))}")
    assign_variants(runs)
    declaration = choose(runs, preset)
    if declaration is not None:
        runs += view_runs(runs, declaration.views)
    if declaration is not None and proposed not in (None, declaration.proposed):
        raise ValueError(f"--proposed {proposed} differs from the declared proposed method {declaration.proposed}")
    proposed = declaration.proposed if declaration is not None else proposed or "fedrouter"
    compare = PairedBootstrap(runs, resamples, seed).compare
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    scenarios: dict[str, dict] = {}
    for name in sorted({r.scenario for r in runs}):
        members = [r for r in runs if r.scenario == name]
        scenarios[name] = {"kinds": task_kinds(members), "protocol": protocol(members)}
    figures = make_figures(runs, out) if with_figures else []
    tables = [
        scenario_section(rows, name, s["kinds"], s["protocol"], reference, proposed, declaration, compare)
        for name, s in scenarios.items()
    ]
    verdicts = judge(rows, declaration, compare) if declaration is not None else []
    views = compare_views(rows, declaration, compare) if declaration is not None and declaration.views else []
    signals = signal(runs)
    if signals:
        tables.append("### Does every task carry signal?\n\n" + signal_table(signals))
    diagnosed = diagnoses(runs, rows)
    if diagnosed:
        tables.append("### Why routing fails on held-out samples\n\n" + diagnosis_table(diagnosed))
    if views:
        tables.insert(0, "### Alternative scorings\n\n" + view_table(views, CONFIDENCE))
    if declaration is not None:
        tables.insert(0, "### Declared claims\n\n" + verdict_table(verdicts, declaration))
    jobs = job_time(job_files)
    intro = INTRO.format(
        reference=reference,
        confidence=CONFIDENCE,
        resamples=resamples,
        comparators=comparators_text(declaration, proposed),
    )
    text = render(runs, failed, tables, figures, intro, paths, running=len(running), jobs=jobs, title=title)
    (out / REPORT_FILE).write_text(text)
    summary = {
        "reference": reference,
        "proposed": proposed,
        "confidence": CONFIDENCE,
        "interval": {
            "method": "paired two-level bootstrap: seeds with replacement, then test items within each task",
            "resamples": resamples,
            "seed": seed,
            "kind": "percentile",
            "fallback": "student-t over seeds (runs without predictions.jsonl)",
        },
        "declaration": declaration.to_json() if declaration is not None else None,
        "alpha": ALPHA,
        "verdicts": [v.to_json() for v in verdicts],
        "views": [v.to_json() for v in views],
        "diagnosis": diagnosed,
        "signal": signals,
        "columns": {c.key: {"title": c.title, "kind": c.kind, "description": c.description} for c in COLUMNS},
        "scenarios": {
            name: {
                "protocol": s["protocol"],
                "tasks": s["kinds"],
                **(
                    {
                        "best_baseline": scenario_best(rows, name, proposed, label_free=False),
                        "best_label_free": scenario_best(rows, name, proposed, label_free=True),
                    }
                    if declaration is None
                    else {}
                ),
            }
            for name, s in scenarios.items()
        },
        "rows": [
            {
                **row_to_json(rows, row, reference),
                "differences": differences_to_json(rows, row, reference, proposed, declaration, compare),
            }
            for row in rows
        ],
        "failed": [str(f.path) for f in failed],
        "running": [str(p) for p in running],
        "jobs": jobs,
    }
    (out / REPORT_JSON).write_text(json.dumps(summary, indent=1, allow_nan=True))
    return out / REPORT_FILE


def job_time(job_files: Sequence[Path]) -> dict[str, float]:
    """Completed sweep jobs and their summed wall time, from their ``job.json`` records."""
    completed, seconds = 0, 0.0
    for path in job_files:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "completed" and isinstance(record.get("seconds"), int | float):
            completed += 1
            seconds += float(record["seconds"])
    return {"completed": completed, "seconds": seconds}


def scenario_section(
    rows: Sequence[Row],
    scenario: str,
    kinds: dict[str, str],
    info: dict,
    reference: str,
    proposed: str,
    declaration: Declaration | None = None,
    compare: Compare | None = None,
) -> str:
    """A scenario's protocol line and tables: scores, paired differences, per-task scores, routing, cost."""
    members = ordered(rows, scenario, reference, proposed)
    keys = filled(members, DIFF_COLUMNS)
    parts = [
        f"### Scenario `{scenario}`",
        describe(info, kinds),
        scores_table(members, rows, reference),
        difference_tables(rows, members, keys, reference, proposed, declaration, *([compare] if compare else [])),
        task_tables(members, kinds),
    ]
    routing = metrics_table(members, ROUTING_TABLE, only_filled=True)
    if routing:
        parts.append("Routing and clustering (methods that record them):\n\n" + routing)
    parts.append(
        "Cost per client-round (totals over the run / (clients x rounds)):\n\n" + metrics_table(members, COST_TABLE)
    )
    return "\n\n".join(p for p in parts if p)


def short_error(error: str, width: int = 200) -> str:
    """First and last line of an error (a remote traceback says what went wrong at its end), no ANSI codes."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", error).splitlines() if line.strip()]
    if not lines:
        return "(no error recorded)"
    first, last = lines[0][:width], lines[-1][:width]
    return first if len(lines) == 1 else f"{first} … {last}"


def slug(text: str) -> str:
    """A file-name-safe version of a group label."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def make_figures(runs: Sequence[Run], out: Path) -> list[Path]:
    """Every figure the runs allow (see :mod:`fedrouter_app.report.plots`)."""
    # Imported here: matplotlib is an optional extra, needed only for figures.
    from fedrouter_app.report import plots

    jobs = []
    for scenario in sorted({r.scenario for r in runs}):
        jobs += [(fn, (runs, scenario, out)) for fn in (plots.task_scores, plots.curves, plots.bytes_per_round)]
    firsts: dict[tuple[str, str, str], Run] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        firsts.setdefault((run.scenario, run.method, run.variant), run)
    for (scenario, method, variant), run in sorted(firsts.items()):
        stem = slug("-".join(filter(None, (method, variant, scenario))))
        jobs += [(plots.routing_confusion, (run, out, stem)), (plots.cluster_assignment, (run, out, stem))]
    written = []
    for fn, args in tqdm(jobs, desc="figures", unit="fig", disable=None):
        path = fn(*args)
        if path is not None:
            written.append(path)
    return written


def render(
    runs: Sequence[Run],
    failed: Sequence[FailedJob],
    tables: Sequence[str],
    figures: Sequence[Path],
    intro: str,
    paths: Sequence[Path],
    running: int = 0,
    jobs: dict[str, float] | None = None,
    title: str = "Comparison report",
) -> str:
    """The Markdown report."""
    methods = sorted({r.method for r in runs})
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} completed runs ({', '.join(methods)}) from {', '.join(f'`{p}`' for p in paths)}"
        + (f"; {len(failed)} failed" if failed else "")
        + (f"; {running} still running" if running else "")
        + "."
        + (
            f" The sweep's {jobs['completed']:.0f} completed jobs took {jobs['seconds'] / 60:.0f} min in all"
            " (wall time each job recorded in its `job.json`)."
            if jobs and jobs.get("completed")
            else ""
        ),
        "",
        intro,
        "",
        "Columns:",
        "",
        definitions(),
        "",
        "\n\n".join(tables),
    ]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{f.path}` ({' '.join(f.overrides)}): {short_error(f.error)}" for f in failed]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"
