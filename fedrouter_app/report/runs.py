"""Finding run directories and reading the numbers a comparison needs from them.

A run directory holds ``results.json`` and ``config.yaml`` (written by the
ServerApp); a sweep job directory may also hold ``job.json`` (written by the
sweep launcher), which records jobs that failed before producing results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedrouter_app.federation.results import RESULTS_FILE, compute_total, load_results
from fedrouter_app.registry import strategy_class

JOB_FILE = "job.json"
CONFIG_FILE = "config.yaml"

# Override keys that place a run in a comparison rather than make a variant (``method.n_local=1`` or
# ``scenario.alpha=0.1`` do make one), and sections that only move a run's outputs or declare what the report tests.
_NOT_VARIANT = ("seed", "method", "scenario", "sweep")
_OUTPUT_ONLY = ("output", "checkpoint", "report")


@dataclass
class Run:
    """One run: what it is and the numbers the report uses.

    Attributes
    ----------
    path : Path
        The run directory.
    method : str
        The method as chosen (the ``method=`` override, so that config variants
        such as ``fltac_code`` stay apart), else the method's name.
    method_name : str
        The registered method the run's configuration names (``fltac`` for ``fltac_code``).
    uses_task_labels : bool or None
        Whether the run's clients were told the true task of every sample (see
        :func:`uses_task_labels`); None if that cannot be known.
    scenario : str
        Scenario name.
    seed : int
        Run seed.
    variant : str
        Overrides that set this run apart from the other runs of the report
        (see :func:`assign_variants`); seed, method, scenario and outputs never do.
    status : str
        ``completed``, ``failed`` or ``running``.
    metrics : dict
        Final metrics by name (see :func:`run_metrics`); NaN where absent.
    results : dict
        The whole results JSON.
    config : dict
        The resolved configuration.
    """

    path: Path
    method: str
    method_name: str
    uses_task_labels: bool | None
    scenario: str
    seed: int
    variant: str
    status: str
    extra_overrides: list[str]
    metrics: dict[str, float]
    results: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    view: str = ""


@dataclass
class FailedJob:
    """A job or run that produced no usable results."""

    path: Path
    overrides: list[str]
    error: str


def find(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Run directories (holding ``results.json``) and job records (``job.json``) under ``paths``."""
    runs: set[Path] = set()
    jobs: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        root = path.parent if path.is_file() else path
        runs.update(p.parent for p in [root / RESULTS_FILE, *root.rglob(RESULTS_FILE)] if p.is_file())
        jobs.update(p for p in [root / JOB_FILE, *root.rglob(JOB_FILE)] if p.is_file())
    return sorted(runs - superseded_runs(runs, jobs)), sorted(jobs)


def superseded_runs(runs: set[Path], jobs: set[Path]) -> set[Path]:
    """Runs in a sweep job's directory other than the one its ``job.json`` names as its completed run.

    A job run again (after a failure, or because its preset changed) leaves its
    earlier run directories beside the new one; only the job's own counts. A
    job that has not completed (still running, or failed) has no run to count:
    its record says why.
    """
    out: set[Path] = set()
    for job in jobs:
        try:
            record = json.loads(job.read_text())
        except (OSError, ValueError):
            continue
        done = record.get("status") == "completed" and record.get("run_dir")
        # Compared by name: a sweep directory may have been moved since the job recorded its path.
        current = Path(str(record["run_dir"])).name if done else None
        out.update(run for run in runs if run.parent == job.parent and run.name != current)
    return out


def load_run(path: Path) -> Run:
    """Read one run directory."""
    results = load_results(path)
    config_file = path / CONFIG_FILE
    config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.exists() else results.get("config", {})
    info = results.get("run", {})
    overrides = [str(o) for o in info.get("overrides", [])]
    chosen = {_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    variant = [o for o in overrides if _key(o) not in _NOT_VARIANT and _key(o).split(".")[0] not in _OUTPUT_ONLY]
    name = str(config.get("method", {}).get("name", info.get("method", "?")))
    return Run(
        path=path,
        method=chosen.get("method", info.get("method", name)),
        method_name=name,
        uses_task_labels=uses_task_labels(results, config),
        scenario=str(info.get("scenario", config.get("scenario", {}).get("name", "?"))),
        seed=int(info.get("seed", config.get("seed", 0))),
        variant=" ".join(variant),
        status=str(info.get("status", "running")),
        extra_overrides=variant,
        metrics=run_metrics(results, config),
        results=results,
        config=config,
    )


def view_runs(runs: Sequence[Run], views: Sequence[str]) -> list[Run]:
    """Runs of the ``method:view`` scorings: a method's alternative scoring of the same runs as a row of its own.

    A view (e.g. FedRouter's ``router-fallback``) is scored on the same test
    items in the same evaluation as the method's main scoring; as its own row
    it is compared like any method, its items read from the view's
    predictions. Runs without that view give no row.
    """
    out = []
    for entry in views:
        method, _, view = entry.partition(":")
        for run in runs:
            final = run.results.get("final") or {}
            scored = (final.get("views") or {}).get(view)
            if run.method != method or run.view or not scored:
                continue
            results = {**run.results, "final": scored}
            out.append(replace(run, method=entry, results=results, metrics=run_metrics(results, run.config), view=view))
    return out


def assign_variants(runs: list[Run]) -> None:
    """Set each run's variant to its overrides that not every run shares.

    A sweep's common settings (``num_rounds=1`` on every job) label nothing;
    a swept key (``train.lr=1e-3,3e-3``) keeps its runs apart.
    """
    if not runs:
        return
    common = set.intersection(*(set(run.extra_overrides) for run in runs))
    for run in runs:
        run.variant = " ".join(o for o in run.extra_overrides if o not in common)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def load_job_failure(path: Path) -> FailedJob | None:
    """The failure recorded in a sweep's ``job.json``, if the job failed."""
    record = json.loads(path.read_text())
    if record.get("status") == "completed":
        return None
    return FailedJob(path=path.parent, overrides=list(record.get("overrides", [])), error=str(record.get("error", "")))


def uses_task_labels(results: dict[str, Any], config: dict[str, Any]) -> bool | None:
    """Whether the run was told each sample's true task: as its results record it, else from its method's flag.

    Runs written before results recorded it are judged by the registered
    strategy's class-level flag on the saved method settings; None for a
    method this installation does not know.
    """
    if "uses_task_labels" in results:
        return bool(results["uses_task_labels"])
    method = config.get("method", {})
    try:
        return strategy_class(str(method.get("name", ""))).told_task_labels(method)
    except KeyError:
        return None


def last_evaluated(results: dict[str, Any]) -> dict[str, Any] | None:
    """The last round that has evaluation results."""
    rounds = [r for r in results.get("rounds", []) if r.get("evaluate", {}).get("clients")]
    return rounds[-1] if rounds else None


def routing_mode(results: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Which routing mode to report: the method's ``router`` setting if it names one, else the first."""
    last = last_evaluated(results)
    routing = (last or {}).get("strategy", {}).get("evaluate", {}).get("routing", {})
    if not routing:
        return None
    preferred = str(config.get("method", {}).get("router", ""))
    return preferred if preferred in routing else sorted(routing)[0]


def registration_clustering(results: dict[str, Any]) -> dict[str, Any]:
    """The first global clustering a method recorded, else ``{}``.

    Clustering by data centroids happens at registration
    (``rounds[i].strategy.setup.clustering``); clustering by adapter updates
    waits for the first training round (``rounds[i].strategy.train.clustering``).
    """
    for r in results.get("rounds", []):
        strategy = r.get("strategy", {})
        for phase in ("setup", "train"):
            clustering = (strategy.get(phase) or {}).get("clustering")
            if clustering:
                return clustering
    return {}


def held_out(results: dict[str, Any]) -> set[str]:
    """Tasks no client of the run trained on."""
    return set(results.get("tasks", {}).get("unseen", []))


def other_clients_scores(final: dict[str, Any], unseen: set[str]) -> dict[str, dict[str, float]]:
    """Per task, the pooled metrics of clients that did not train on it, for tasks some client trained on.

    Recorded as ``other_clients_per_task``; for results written before that,
    the same pool is ``other_per_task`` without the held-out tasks.
    """
    if "other_clients_per_task" in final:
        return final["other_clients_per_task"]
    return {t: m for t, m in (final.get("other_per_task") or {}).items() if t not in unseen}


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Final score per task: pooled over every client tested on it (``all``), over the clients that trained on
    it (``own``) and over those that did not while another client did (``other_clients``); ``examples``: the
    test examples behind ``all``."""
    final = results.get("final") or {}
    views = {
        "all": final.get("per_task") or {},
        "own": final.get("own_per_task") or {},
        "other_clients": other_clients_scores(final, held_out(results)),
    }
    out: dict[str, dict[str, float]] = {}
    for view, per_task in views.items():
        for task, m in per_task.items():
            out.setdefault(task, {})[view] = float(m.get("score", math.nan))
    for task, m in views["all"].items():
        out[task]["examples"] = float(m.get("n", math.nan))
    return out


def run_metrics(results: dict[str, Any], config: dict[str, Any]) -> dict[str, float]:
    """The final numbers of a run, NaN where a run has none.

    Scores (mean over tasks of the score pooled over clients per task):
    ``own`` on each client's own tasks (P); ``other_clients`` on tasks the
    client did not train on but another client did; ``held_out`` on tasks no
    client trained on; ``all`` on every evaluated task (TTP under
    ``eval.scope=global``); ``seen`` on tasks some client trains on, every
    client pooled. ``loss``: mean evaluation loss over tasks. ``routing``
    (``_own``, ``_other``): routing accuracy (on the client's own tasks, on
    other clients' tasks). ``ari_global``, ``ari_local`` (mean over clients),
    ``ari_local_min``: adjusted Rand index of the clustering at registration
    against the true tasks. Per client-round, totals over the run divided by
    ``num_clients x num_rounds``: ``up``/``down`` tensor bytes of every phase,
    ``train_steps``, ``train_tokens`` and ``forward_tokens``.
    """
    final = results.get("final") or {}

    def score(key: str, metric: str = "score") -> float:
        return float((final.get(key) or {}).get(metric, math.nan))

    others = [float(m.get("score", math.nan)) for m in other_clients_scores(final, held_out(results)).values()]
    out = {
        "own": score("own_mean"),
        "other_clients": sum(others) / len(others) if others else math.nan,
        "held_out": score("unseen_mean"),
        "all": score("mean"),
        "seen": score("seen_mean"),
        "loss": score("mean", "loss"),
        **dict.fromkeys(("routing", "routing_own", "routing_other"), math.nan),
    }
    mode = routing_mode(results, config)
    if mode is not None:
        routing = last_evaluated(results)["strategy"]["evaluate"]["routing"][mode]
        for key, name in (
            ("routing", "accuracy"),
            ("routing_own", "accuracy_own"),
            ("routing_other", "accuracy_other"),
        ):
            out[key] = float(routing.get(name, math.nan))
    clustering = registration_clustering(results)
    local = [float(s["ari"]) for s in clustering.get("local", {}).values() if math.isfinite(s.get("ari", math.nan))]
    out["ari_global"] = float(clustering.get("global", {}).get("ari", math.nan))
    out["ari_local"] = float(clustering.get("local_mean", {}).get("ari", math.nan))
    out["ari_local_min"] = min(local) if local else math.nan
    client_rounds = int(config.get("num_clients", 0)) * int(config.get("num_rounds", 0))
    rounds = results.get("rounds", [])
    totals = {
        direction: sum(r.get("traffic", {}).get(f"bytes_{direction}", 0) for r in rounds)
        for direction in ("up", "down")
    }
    for key, counter in (
        ("train_steps", "train-steps"),
        ("train_tokens", "train-tokens"),
        ("forward_tokens", "forward-tokens"),
    ):
        totals[key] = compute_total(rounds, counter)
    for key, total in totals.items():
        out[key] = total / client_rounds if client_rounds else math.nan
    return out
