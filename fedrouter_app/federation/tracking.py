"""Runs in MLflow (``output.mlflow``): the config, per-round metrics, the final per-task table, the run's files.

A loop callback beside the TensorBoard one (:mod:`~fedrouter_app.federation.progress`), with the same per-round
scalars. One MLflow run per fedrouter run, in the experiment ``output.mlflow_experiment``; a sweep's jobs are
children of one parent run per sweep directory (:func:`sweep_parent`), so MLflow's UI shows a sweep as one row
that unfolds. ``output.mlflow=local`` keeps everything beside the runs: ``sqlite:///<output.dir>/mlflow.db`` and the
artifacts in ``<output.dir>/mlruns``; browse with ``mlflow ui --backend-store-uri sqlite:///<output.dir>/mlflow.db``
(the full ``mlflow`` package; the ``mlflow`` extra installs the client only, ``mlflow-skinny``).

MLflow is imported only when a run asks for it; without it installed such a run stops at start with one line.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrouter_app.federation.progress import round_scalars, unseen_tasks
from fedrouter_app.federation.results import summarize_evaluation
from fedrouter_app.logs import get_logger
from fedrouter_app.schema.checks import ConfigError

if TYPE_CHECKING:
    from fedrouter_app.federation.exchange import RoundRecord
    from fedrouter_app.model.lora import LoraTemplate
    from fedrouter_app.schema.outputs import OutputSettings
    from fedrouter_app.schema.settings import RunConfig
    from fedrouter_app.strategies.base import Strategy

log = get_logger(__name__)

LOCAL = "local"
# MLflow's limits: a parameter value holds at most 6000 characters, a batch at most 100 parameters.
MAX_PARAM_CHARS = 6000
PARAM_BATCH = 100
# The run's files logged as artifacts at its end, where they exist.
ARTIFACTS = ("config.yaml", "results.json", "rounds.jsonl", "predictions.jsonl")
# The environment variable a sweep sets for its jobs: the parent run's id.
PARENT_ENV = "FEDROUTER_MLFLOW_PARENT"


def tracking_uri(output: OutputSettings) -> str:
    """The tracking URI ``output.mlflow`` names (``local``: a SQLite file in ``output.dir``)."""
    if output.mlflow == LOCAL:
        return f"sqlite:///{Path(output.dir).expanduser().resolve() / 'mlflow.db'}"
    return output.mlflow


def client(output: OutputSettings) -> Any:
    """An ``MlflowClient`` for ``output.mlflow``; one clear line when MLflow is not installed."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            f"output.mlflow={output.mlflow!r} needs MLflow: pip install -e '.[mlflow]' (or leave output.mlflow empty)"
        )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(output))


def experiment_id(mlflow: Any, output: OutputSettings) -> str:
    """The id of experiment ``output.mlflow_experiment``, created (artifacts in ``output.dir``) if new."""
    found = mlflow.get_experiment_by_name(output.mlflow_experiment)
    if found is not None:
        return str(found.experiment_id)
    uri = tracking_uri(output)
    # A local database keeps its artifacts beside it (MLflow's default is ./mlruns, wherever the run started).
    location = (
        (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri() if uri.startswith("sqlite:///") else None
    )
    return str(mlflow.create_experiment(output.mlflow_experiment, artifact_location=location))


def flat_params(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``section.key`` -> text, each cut to MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


def sweep_parent(output: OutputSettings, sweep_dir: Path, name: str) -> str:
    """The parent run of the sweep writing to ``sweep_dir``: found by its tag, else created; its run id.

    A sweep resumed later (the same directory) adds its new jobs under the same parent.
    """
    mlflow = client(output)
    experiment = experiment_id(mlflow, output)
    folder = str(sweep_dir.expanduser().resolve())
    found = mlflow.search_runs([experiment], filter_string=f"tags.`fedrouter.sweep_dir` = '{folder}'", max_results=1)
    if found:
        return str(found[0].info.run_id)
    run = mlflow.create_run(experiment, run_name=name, tags={"fedrouter.sweep_dir": folder, "fedrouter.kind": "sweep"})
    return str(run.info.run_id)


class MlflowLog:
    """Loop callback: one MLflow run per fedrouter run.

    At the start the whole config as parameters (``section.key``) and tags (method, scenario, seed, the run's
    directory; ``mlflow.parentRunId`` for a sweep's job); after every round :func:`round_scalars` as metrics at
    that step; at the end the last evaluation's per-task scores (``final/<task>``, ``final/mean``) and the run's
    files as artifacts.
    """

    def __init__(self, output: OutputSettings, run_dir: Path, parent: str | None = None) -> None:
        self.output = output
        self.run_dir = run_dir
        self.parent = parent
        self.mlflow: Any = None
        self.run_id = ""
        self.unseen: tuple[str, ...] = ()
        self.last: dict[int, dict[str, float]] = {}

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        from mlflow.entities import Param

        self.mlflow = client(self.output)
        self.unseen = unseen_tasks(cfg)
        tags = {
            "method": cfg.method.name,
            "scenario": cfg.scenario.name,
            "seed": str(cfg.seed),
            "fedrouter.run_dir": str(self.run_dir),
            **({"mlflow.parentRunId": self.parent} if self.parent else {}),
        }
        run = self.mlflow.create_run(experiment_id(self.mlflow, self.output), run_name=self.run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flat_params(cfg.to_dict()).items()]
        for start in range(0, len(params), PARAM_BATCH):
            self.mlflow.log_batch(self.run_id, params=params[start : start + PARAM_BATCH])
        log.info("MLflow run %s in %s", self.run_id, tracking_uri(self.output))

    def on_round_end(self, record: RoundRecord) -> None:
        if self.mlflow is None:
            return
        from mlflow.entities import Metric

        now = _millis()
        metrics = [
            Metric(key, float(value), now, record.server_round)
            for key, value in round_scalars(record, self.unseen).items()
            if math.isfinite(float(value))
        ]
        self.mlflow.log_batch(self.run_id, metrics=metrics)
        if record.evaluate:
            self.last = record.evaluate

    def on_run_end(self, strategy: Strategy) -> None:
        if self.mlflow is None:
            return
        if self.last:
            summary = summarize_evaluation(self.last, unseen=self.unseen)
            for task, m in summary["per_task"].items():
                self.mlflow.log_metric(self.run_id, f"final/{task}", m["score"])
            if "score" in summary["mean"]:
                self.mlflow.log_metric(self.run_id, "final/mean", summary["mean"]["score"])
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.mlflow.log_artifact(self.run_id, str(self.run_dir / name))
        self.mlflow.set_terminated(self.run_id)
        self.mlflow = None

    def fail(self) -> None:
        """Mark the MLflow run failed (the run stopped with an error)."""
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.run_id, status="FAILED")
            self.mlflow = None


def _millis() -> int:
    return int(time.time() * 1000)
