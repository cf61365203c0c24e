"""Per-task tables and the test protocol of a scenario, as its runs recorded them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedrouter_app.report.runs import Run, held_out, other_clients_scores
from fedrouter_app.report.table import Row, format_stat, line

OWN, OTHER, MIXED, HELD_OUT = "own", "other", "own+other", "held-out"
LEGEND = (
    "Task marks: *own*: every client tested on the task trained on it; *other*: none did, another client did; "
    "*own+other*: some did (the pooled score mixes both; split below); *held-out*: no client trained on it."
)
VIEW_TITLES = {
    "all": "every client tested on it, pooled",
    "own": "the clients that trained on it (own task)",
    "other_clients": "the clients that did not train on it while another did (other clients' task)",
}


def task_kinds(runs: Sequence[Run]) -> dict[str, str]:
    """What each evaluated task is to the clients tested on it, over ``runs`` (one scenario).

    ``held-out``: no client trains on it; ``own``: every client tested on it
    trains on it; ``other``: none does, another client does (other clients'
    task); ``own+other``: some do (its pooled score mixes both).
    """
    own: set[str] = set()
    other: set[str] = set()
    unseen: set[str] = set()
    for run in runs:
        final = run.results.get("final") or {}
        # Held-out tasks count only where tested (eval.scope=global).
        unseen |= held_out(run.results) & set(final.get("per_task") or {})
        own |= set(final.get("own_per_task") or {})
        other |= set(other_clients_scores(final, held_out(run.results)))
    kinds = {t: HELD_OUT for t in unseen}
    for task in sorted((own | other) - unseen):
        kinds[task] = MIXED if task in own and task in other else OWN if task in own else OTHER
    return dict(sorted(kinds.items()))


def _span(values: Sequence[float]) -> dict[str, float] | None:
    return {"min": min(values), "max": max(values)} if values else None


def protocol(runs: Sequence[Run]) -> dict[str, Any]:
    """How one scenario's runs were tested: clients, rounds, seeds, evaluation scope and test examples.

    ``seeds``: how many seeds (``seed_values``: which). ``examples_per_task_and_client``:
    test examples of one task one client was scored on (at the last
    evaluation); ``tasks_per_client``: tasks a client was tested on; each as its
    minimum and maximum over runs and clients. ``test_items_per_task``: the
    fewest test items behind a reported cell, a (task, score column) pooled
    over clients, in any run (``test_items_per_task_by_column``: the same per
    column). ``clients_per_task``: the fewest clients training a task (held-out
    tasks aside) in any run, from the runs' recorded task assignment
    (``clients_per_task_source``: ``assignment``), else from their last
    evaluation's own-task marks (``evaluation``); None where neither says.
    """
    per_client, tasks_per_client = [], []
    for run in runs:
        for client in ((run.results.get("final") or {}).get("clients") or {}).values():
            tasks = client.get("tasks", {})
            per_client += [float(m.get("n", 0.0)) for m in tasks.values()]
            tasks_per_client.append(float(len(tasks)))
    by_column: dict[str, float] = {}
    for run in runs:
        for column, count in cell_items(run.results).items():
            by_column[column] = min(by_column.get(column, math.inf), count)
    trained = [training_clients(run.results) for run in runs]
    counts = [n for n, _ in trained if n is not None]
    seeds = sorted({run.seed for run in runs})
    return {
        "num_clients": sorted({int(run.config.get("num_clients", 0)) for run in runs}),
        "num_rounds": sorted({int(run.config.get("num_rounds", 0)) for run in runs}),
        "seeds": len(seeds),
        "seed_values": seeds,
        "eval_scope": sorted({str(run.config.get("eval", {}).get("scope", "?")) for run in runs}),
        "held_out_tasks": sorted(set().union(*(held_out(run.results) for run in runs))),
        "examples_per_task_and_client": _span(per_client),
        "tasks_per_client": _span(tasks_per_client),
        "test_items_per_task": int(min(by_column.values())) if by_column else None,
        "test_items_per_task_by_column": {k: int(v) for k, v in by_column.items()},
        "clients_per_task": min(counts) if counts else None,
        "clients_per_task_source": ("evaluation" if any(s == "evaluation" for _, s in trained) else "assignment")
        if counts
        else None,
    }


# The pooled per-task scores behind each score column in a run's final evaluation.
_CELLS = {"own": "own_per_task", "held_out": "unseen_per_task", "all": "per_task"}


def cell_items(results: dict[str, Any]) -> dict[str, float]:
    """Per score column, the fewest test items (pooled over clients) of any of its tasks in a run's final scores."""
    final = results.get("final") or {}
    unseen = held_out(results)
    cells = {column: final.get(key) or {} for column, key in _CELLS.items()}
    cells["other_clients"] = other_clients_scores(final, unseen)
    if not cells["held_out"]:  # results from before the held-out split was recorded
        cells["held_out"] = {t: m for t, m in cells["all"].items() if t in unseen}
    return {
        column: min(float(m.get("n", 0.0)) for m in per_task.values()) for column, per_task in cells.items() if per_task
    }


def training_clients(results: dict[str, Any]) -> tuple[int | None, str]:
    """The fewest clients training any trained task of a run, and where that was read from.

    From the recorded assignment (``tasks.train_clients``), else counted from
    the clients of the last evaluation that mark the task as their own (which
    misses clients left out of that evaluation).
    """
    tasks = results.get("tasks") or {}
    seen = set(tasks.get("seen") or [])
    recorded = tasks.get("train_clients")
    if recorded:
        counts = [int(n) for t, n in recorded.items() if t in seen or (not seen and n)]
        return (min(counts) if counts else None), "assignment"
    owners: dict[str, int] = {}
    for client in ((results.get("final") or {}).get("clients") or {}).values():
        for task, m in (client.get("tasks") or {}).items():
            if float(m.get("own", 1.0)) >= 0.5:
                owners[task] = owners.get(task, 0) + 1
    counts = [owners.get(t, 0) for t in seen] if seen else list(owners.values())
    return (min(counts) if counts else None), "evaluation"


def _range(span: dict[str, float] | None) -> str:
    if span is None:
        return "?"
    low, high = f"{span['min']:g}", f"{span['max']:g}"
    return low if low == high else f"{low} to {high}"


def describe(info: dict[str, Any], kinds: dict[str, str]) -> str:
    """One paragraph saying how a scenario was tested (``info``: :func:`protocol`)."""
    seeds = info["seed_values"]
    held = info["held_out_tasks"]
    text = (
        f"{'/'.join(map(str, info['num_clients']))} clients, {'/'.join(map(str, info['num_rounds']))} "
        f"rounds, {len(seeds)} seeds ({', '.join(map(str, seeds))}), eval.scope={'/'.join(info['eval_scope'])}. "
        f"Each client was scored on {_range(info['examples_per_task_and_client'])} test examples of each of the "
        f"{_range(info['tasks_per_client'])} tasks it was tested on; a task's score pools its clients."
    )
    if info.get("test_items_per_task") is not None:
        text += f" Every reported cell of a run rests on at least {info['test_items_per_task']} test items per task"
        clients = info.get("clients_per_task")
        plural = "" if clients == 1 else "s"
        trains = "trains" if clients == 1 else "train"
        text += f"; at least {clients} client{plural} {trains} each trained task." if clients is not None else "."
    if held:
        text += f" Held-out tasks (no client trains on them): {', '.join(f'`{t}`' for t in held)}"
        tested = any(kinds.get(t) == HELD_OUT for t in held)
        text += "." if tested else "; not tested, as each client was tested on its own tasks only."
    return text


def task_tables(members: Sequence[Row], kinds: dict[str, str]) -> str:
    """Score per task (mean ± std over seeds) per row; split by own / other clients' where a task mixes both."""
    tasks = [t for t in kinds if any(t in row.tasks for row in members)]
    if not tasks:
        return ""
    views = ["all", *(("own", "other_clients") if MIXED in kinds.values() else ())]
    out = []
    for view in views:
        shown = [t for t in tasks if any(row.tasks.get(t, {}).get(view) and row.tasks[t][view].n for row in members)]
        # The split tables hold only mixed tasks; their mark says nothing there.
        header = ["method", *(f"{t} ({kinds[t]})" if view == "all" else t for t in shown)]
        lines = [f"Score per task on {VIEW_TITLES[view]}:", "", line(header), line(["---"] * len(header))]
        if view == "all":
            lines[1:1] = ["", LEGEND]
        for row in members:
            cells = [format_stat(row.tasks[t][view], "score") if t in row.tasks else "-" for t in shown]
            lines.append(line([row.label, *cells]))
        examples = [f"{t} {row.examples[t]:g}" for row in members[:1] for t in shown if t in row.examples]
        if view == "all" and examples:
            lines += ["", f"Test examples behind each pooled task score (`{members[0].label}`): {', '.join(examples)}."]
        out.append("\n".join(lines))
    return "\n\n".join(out)
