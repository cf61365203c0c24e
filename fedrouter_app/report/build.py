"""Assemble the report: load runs, aggregate, write Markdown, JSON and figures."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from fedrouter_app.report import plots
from fedrouter_app.report.runs import FailedJob, Run, assign_variants, find, load_job_failure, load_run
from fedrouter_app.report.table import aggregate, markdown_tables, rows_to_json

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"

DEFINITIONS = """\
Scores are those of the last evaluated round, pooled over clients per task and then averaged over tasks; each
cell is the mean ± sample standard deviation over seeds. *own tasks (P)*: each client's own tasks (those it holds
training data for; personalisation); *others' tasks*: tasks the client did not train on but other clients did or
no one did; *all tasks (TTP)*: every task a client is tested on (all tasks under `eval.scope=global`); *seen* /
*unseen tasks*: tasks some client / no client trains on (unseen: held out of all training); *eval loss*: mean
teacher-forced loss over all tasks; *routing acc*: share of test samples routed to the cluster of their true task
(methods that route); *bytes up/down per client-round*: tensor bytes of every phase (registration, training,
evaluation) divided by clients x rounds. *vs {reference}*: relative gain of the mean score over `{reference}` in
the same scenario."""


def build_report(paths: Sequence[Path], out: Path, reference: str = "fedit", with_figures: bool = True) -> Path:
    """Write ``report.md``, ``report.json`` and figures for the runs under ``paths``; return the Markdown path."""
    run_dirs, job_files = find([Path(p) for p in paths])
    runs: list[Run] = []
    failed: list[FailedJob] = []
    for path in tqdm(run_dirs, desc="reading runs", unit="run", disable=None):
        run = load_run(path)
        if run.status == "completed":
            runs.append(run)
        else:
            error = str(run.results.get("run", {}).get("error", f"status {run.status}"))
            failed.append(FailedJob(path, list(run.results.get("run", {}).get("overrides", [])), error))
    failed_dirs = {f.path for f in failed} | {r.path for r in runs}
    for job in job_files:
        failure = load_job_failure(job)
        # A job whose run directory is already listed (as a run or a failed run) is not counted twice.
        if failure and not any(d.is_relative_to(failure.path) for d in failed_dirs):
            failed.append(failure)
    if not runs:
        raise ValueError(f"no completed runs under {', '.join(map(str, paths))}")
    assign_variants(runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    figures = make_figures(runs, out) if with_figures else []
    text = render(runs, failed, markdown_tables(rows, reference), figures, reference, paths)
    (out / REPORT_FILE).write_text(text)
    summary = {"reference": reference, "rows": rows_to_json(rows, reference), "failed": [str(f.path) for f in failed]}
    (out / REPORT_JSON).write_text(json.dumps(summary, indent=1, allow_nan=True))
    return out / REPORT_FILE


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
    tables: str,
    figures: Sequence[Path],
    reference: str,
    paths: Sequence[Path],
) -> str:
    """The Markdown report."""
    methods = sorted({r.method for r in runs})
    lines = [
        "# Comparison report",
        "",
        f"{len(runs)} completed runs ({', '.join(methods)}) from {', '.join(f'`{p}`' for p in paths)}"
        + (f"; {len(failed)} failed." if failed else "."),
        "",
        DEFINITIONS.format(reference=reference),
        "",
        tables,
    ]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{f.path}` ({' '.join(f.overrides)}): {short_error(f.error)}" for f in failed]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"
