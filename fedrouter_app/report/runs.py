"""Finding run directories and reading the numbers a comparison needs from them.

A run directory holds ``results.json`` and ``config.yaml`` (written by the
ServerApp); a sweep job directory may also hold ``job.json`` (written by the
sweep launcher), which records jobs that failed before producing results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedrouter_app.results import RESULTS_FILE

JOB_FILE = "job.json"
CONFIG_FILE = "config.yaml"

# Override keys that place a run in a comparison (or only move its outputs) rather than make a variant.
_NOT_VARIANT = ("seed", "method", "scenario", "sweep", "output")


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
    scenario: str
    seed: int
    variant: str
    status: str
    extra_overrides: list[str]
    metrics: dict[str, float]
    results: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)


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
    return sorted(runs), sorted(jobs)


def load_run(path: Path) -> Run:
    """Read one run directory."""
    results = json.loads((path / RESULTS_FILE).read_text())
    config_file = path / CONFIG_FILE
    config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.exists() else results.get("config", {})
    info = results.get("run", {})
    overrides = [str(o) for o in info.get("overrides", [])]
    chosen = {_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    variant = [o for o in overrides if _key(o).split(".")[0] not in _NOT_VARIANT]
    return Run(
        path=path,
        method=chosen.get("method", info.get("method", config.get("method", {}).get("name", "?"))),
        scenario=str(info.get("scenario", config.get("scenario", {}).get("name", "?"))),
        seed=int(info.get("seed", config.get("seed", 0))),
        variant=" ".join(variant),
        status=str(info.get("status", "running")),
        extra_overrides=variant,
        metrics=run_metrics(results, config),
        results=results,
        config=config,
    )


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


def run_metrics(results: dict[str, Any], config: dict[str, Any]) -> dict[str, float]:
    """The final numbers of a run, NaN where a run has none.

    ``own``: score on each client's own tasks (P); ``other``: on tasks the
    client did not train on; ``all``: on every evaluated task (TTP under
    ``eval.scope=global``); ``seen``/``unseen``: on tasks some / no client
    trains on; ``loss``: mean evaluation loss over tasks; ``routing``:
    routing accuracy; ``up``/``down``: tensor bytes per client-round, all
    phases (registration, training, evaluation) over ``num_clients x
    num_rounds``.
    """
    final = results.get("final") or {}

    def score(key: str, metric: str = "score") -> float:
        return float((final.get(key) or {}).get(metric, math.nan))

    out = {
        "own": score("own_mean"),
        "other": score("other_mean"),
        "all": score("mean"),
        "seen": score("seen_mean"),
        "unseen": score("unseen_mean"),
        "loss": score("mean", "loss"),
        "routing": math.nan,
    }
    mode = routing_mode(results, config)
    if mode is not None:
        routing = last_evaluated(results)["strategy"]["evaluate"]["routing"][mode]
        out["routing"] = float(routing.get("accuracy", math.nan))
    client_rounds = int(config.get("num_clients", 0)) * int(config.get("num_rounds", 0))
    rounds = results.get("rounds", [])
    for direction in ("up", "down"):
        total = sum(r.get("traffic", {}).get(f"bytes_{direction}", 0) for r in rounds)
        out[direction] = total / client_rounds if client_rounds else math.nan
    return out
