"""Run outputs as loop callbacks: the results JSON, a progress line per round, a final table.

Each round is appended to the run's ``rounds.jsonl`` as it ends (and synced to the
disk), so a run that stops early still leaves everything it measured, and a round's
cost does not grow with the rounds before it; ``results.json`` gathers them when the
run ends. A resumed run keeps every earlier round (:func:`earlier_results`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrouter_app.data.partition import client_tasks, seen_tasks, unseen_tasks
from fedrouter_app.durable import append_text, write_text
from fedrouter_app.federation.checkpoint import CheckpointError
from fedrouter_app.federation.exchange import RoundRecord
from fedrouter_app.federation.predictions_file import (
    load_predictions as load_predictions,  # the reader of predictions.jsonl
)
from fedrouter_app.federation.privacy_accounting import privacy_summary
from fedrouter_app.logs import get_logger
from fedrouter_app.ml.evaluation import METRICS
from fedrouter_app.model.lora import LoraTemplate, num_parameters
from fedrouter_app.schema.settings import RunConfig

if TYPE_CHECKING:
    from fedrouter_app.strategies.base import Strategy

log = get_logger(__name__)

RESULTS_FILE = "results.json"
# Rounds of a run still going, one JSON line each (see ResultsWriter).
ROUNDS_FILE = "rounds.jsonl"
TASK_METRICS = (*METRICS, "score")

# Work counters clients put in their replies (fedrouter_app/client/client_env.py): optimizer steps, non-padding tokens
# trained on, and token positions the backbone computed for anything the message asked (padding included).
COMPUTE_COUNTERS = ("train-steps", "train-tokens", "forward-tokens")
# What every valid reply of a phase carries; a run total missing some of it would undercount, so it is NaN.
# Other phases (a method's own queries) must carry forward tokens.
EXPECTED_COUNTERS: dict[str, tuple[str, ...]] = {"train": COMPUTE_COUNTERS, "evaluate": ("forward-tokens",)}
QUERY_COUNTERS = ("forward-tokens",)


def parse_task_metrics(metrics: dict[str, float], view: str = "") -> dict[str, dict[str, float]]:
    """``{"task.add.loss": 1.2, ...}`` -> ``{"add": {"loss": 1.2, ...}}`` (of one view)."""
    prefix = f"{view}/task." if view else "task."
    tasks: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        if key.startswith(prefix):
            task, metric = key[len(prefix) :].rsplit(".", 1)
            tasks[task][metric] = value
    return dict(tasks)


def view_names(evaluate: dict[int, dict[str, float]]) -> list[str]:
    """Alternative scorings present in evaluation metrics (keys ``<view>/task....``)."""
    return sorted({key.split("/", 1)[0] for metrics in evaluate.values() for key in metrics if "/task." in key})


def summarize_round(evaluate: dict[int, dict[str, float]], unseen: Collection[str] | None = None) -> dict[str, Any]:
    """Pooled summary of the main scoring plus one per view."""
    summary = summarize_evaluation(evaluate, unseen=unseen)
    views = {view: summarize_evaluation(evaluate, view, unseen) for view in view_names(evaluate)}
    return {**summary, "views": views} if views else summary


def summarize_evaluation(
    evaluate: dict[int, dict[str, float]], view: str = "", unseen: Collection[str] | None = None
) -> dict[str, Any]:
    """Pool per-client, per-task metrics of one round.

    Returns ``per_task`` (example-weighted over clients), ``mean`` (unweighted
    mean over tasks: under ``eval.scope=global`` the score over all tasks,
    "TTP"), and the same two restricted to each client's own tasks
    (``own_per_task``, ``own_mean``: personalisation, "P") and to tasks the
    client never trained on (``other_*``). Given ``unseen`` (the tasks no
    client of the federation trains on), also ``seen_*`` and ``unseen_*``
    (held-out tasks), the federation-level split, and ``other_clients_*``:
    tasks the client never trained on but another client did (generalisation
    across clients; ``other_*`` minus the held-out tasks).
    """
    names = ("all", "own", "other", *(("other_clients", "seen", "unseen") if unseen is not None else ()))
    groups: dict[str, dict[str, list[tuple[float, dict[str, float]]]]] = {name: defaultdict(list) for name in names}
    for metrics in evaluate.values():
        for task, m in parse_task_metrics(metrics, view).items():
            entry = (m.get("n", 0.0), m)
            groups["all"][task].append(entry)
            own = m.get("own", 1.0) >= 0.5
            groups["own" if own else "other"][task].append(entry)
            if unseen is not None:
                groups["unseen" if task in unseen else "seen"][task].append(entry)
                if not own and task not in unseen:
                    groups["other_clients"][task].append(entry)
    out: dict[str, Any] = {}
    for name, by_task in groups.items():
        per_task = {task: _pool(entries) for task, entries in sorted(by_task.items())}
        prefix = "" if name == "all" else f"{name}_"
        out[f"{prefix}per_task"] = per_task
        out[f"{prefix}mean"] = {k: _mean([m[k] for m in per_task.values()]) for k in TASK_METRICS} if per_task else {}
    return out


def _pool(entries: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    total = sum(n for n, _ in entries)
    pooled = {k: sum(n * m.get(k, math.nan) for n, m in entries) / total for k in TASK_METRICS} if total else {}
    return {"n": total, **pooled}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _client_evaluation(metrics: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": parse_task_metrics(metrics)}
    views = {view: parse_task_metrics(metrics, view) for view in view_names({0: metrics})}
    if views:
        out["views"] = views
    other = {k: v for k, v in metrics.items() if "task." not in k and k != "partition-id"}
    if other:
        out["metrics"] = other
    return out


def compute_to_json(phases: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, Any]:
    """Work counters of a round's valid replies, per phase: ``replies`` and per counter sum, mean, clients.

    ``phases`` maps a phase to each replying client's metrics. A counter no
    reply of a phase carries is left out (older clients, methods that do not
    count); ``clients`` says how many replies carried it, so that a total
    missing some of them can be told apart (see :func:`compute_total`).
    """
    out: dict[str, Any] = {}
    for phase, replies in phases.items():
        if not replies:
            continue
        summary: dict[str, Any] = {"replies": len(replies)}
        for counter in COMPUTE_COUNTERS:
            values = [float(m[counter]) for m in replies.values() if counter in m]
            if values:
                summary[counter] = {"sum": sum(values), "mean": sum(values) / len(values), "clients": len(values)}
        out[phase] = summary
    return out


def round_compute(round_json: Mapping[str, Any]) -> dict[str, Any]:
    """A round's ``compute`` block; rebuilt from its per-client metrics for results written before it existed."""
    if "compute" in round_json:
        return round_json["compute"]
    clients = round_json.get("evaluate", {}).get("clients", {})
    return compute_to_json(
        {
            "train": round_json.get("train", {}).get("clients", {}),
            "evaluate": {c: e.get("metrics", {}) for c, e in clients.items()},
        }
    )


def compute_total(rounds: Sequence[Mapping[str, Any]], counter: str) -> float:
    """``counter`` summed over every round and phase of a results JSON; NaN if unknown or incomplete.

    NaN when no reply carried it, or when a phase that should carry it
    (:data:`EXPECTED_COUNTERS`; :data:`QUERY_COUNTERS` for ``query.*``) has
    a valid reply without it, or has traffic but no recorded replies (a
    method's own queries): an undercount would flatter the method.
    """
    total, seen = 0.0, False
    for r in rounds:
        compute = round_compute(r)
        queried = {ex.get("phase", "") for ex in r.get("traffic", {}).get("exchanges", [])}
        unrecorded = {p for p in queried if p.startswith("query.") and p not in compute}
        if counter in QUERY_COUNTERS and unrecorded:
            return math.nan
        for phase, summary in compute.items():
            entry = summary.get(counter)
            expected = counter in EXPECTED_COUNTERS.get(phase, QUERY_COUNTERS if phase.startswith("query.") else ())
            if expected and (entry is None or entry["clients"] < summary["replies"]):
                return math.nan
            if entry is not None:
                total, seen = total + entry["sum"], True
    return total if seen else math.nan


def round_to_json(record: RoundRecord, unseen: Collection[str] | None = None) -> dict[str, Any]:
    """The JSON form of one round (``unseen``: tasks no client trains on, for the seen/unseen split)."""
    train = {str(c): m for c, m in sorted(record.train.items())}
    losses = [m["train-loss"] for m in record.train.values() if m.get("train-steps", 0) > 0]
    by_client: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for ex in record.traffic:
        for key in ("bytes_down", "bytes_up", "wire_down", "wire_up"):
            by_client[str(ex.client)][ex.phase][key] += getattr(ex, key)
    return {
        "round": record.server_round,
        "lr": record.lr,
        "seconds": record.seconds,
        "train": {"clients": train, "mean_loss": _mean(losses)},
        "evaluate": {
            "clients": {str(c): _client_evaluation(m) for c, m in sorted(record.evaluate.items())},
            **(summarize_round(record.evaluate, unseen) if record.evaluate else {}),
        },
        "strategy": record.strategy,
        **({"privacy": record.privacy} if record.privacy else {}),
        "failures": [asdict(f) for f in record.failures],
        "failure_counts": failure_counts(record),
        "joined": {str(c): node for c, node in sorted(record.joined.items())},
        "traffic": {
            "exchanges": [asdict(ex) for ex in record.traffic],
            "clients": {c: {phase: dict(b) for phase, b in v.items()} for c, v in sorted(by_client.items())},
            "bytes_down": sum(ex.bytes_down for ex in record.traffic),
            "bytes_up": sum(ex.bytes_up for ex in record.traffic),
        },
        # Only training and evaluation replies reach the round record; a method's own queries are not counted.
        "compute": compute_to_json({"train": record.train, "evaluate": record.evaluate, **record.queries}),
    }


def failure_counts(record: RoundRecord) -> dict[str, dict[str, int]]:
    """Failures of a round by phase and kind, e.g. ``{"train": {"rejected": 1, "missing": 2}}``.

    Kinds: ``rejected`` (a reply that failed a check), ``client-error`` (the
    client raised), ``missing`` (no reply in time, or the node is gone).
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for failure in record.failures:
        counts[failure.phase][failure.kind] += 1
    return {phase: dict(kinds) for phase, kinds in sorted(counts.items())}


class ResultsWriter:
    """Writes a run's results: one line per round to ``rounds.jsonl``, the whole ``results.json`` at the end.

    A round costs what its own record costs to write, however long the run: rounds
    are appended to :data:`ROUNDS_FILE` as they end, and ``results.json`` holds
    the run's header (config, tasks, adapter, status) until the run completes or
    fails, when it is written once with every round in it and the rounds file
    goes. A run that stops early still leaves everything it measured;
    :func:`load_results` reads either form.
    """

    def __init__(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        self.path = run_dir / RESULTS_FILE
        self.rounds_path = run_dir / ROUNDS_FILE
        self.data: dict[str, Any] = {
            "format": 1,
            "run": {**run_info, "status": "running", "started_at": _now()},
        }
        self.unseen: tuple[str, ...] = ()
        self.last_evaluate: dict[str, Any] = {}

    @classmethod
    def resume(cls, run_dir: Path, after_round: int, run_info: dict[str, Any]) -> ResultsWriter:
        """Continue ``run_dir``'s results: keep rounds up to ``after_round``, note the resumption."""
        writer = cls(run_dir, run_info)
        previous = earlier_results(run_dir, after_round)
        rounds = [r for r in previous["rounds"] if r.get("round", 0) <= after_round]
        resumed = [*previous.get("run", {}).get("resumed", []), {"after_round": after_round, "at": _now()}]
        started = previous.get("run", {}).get("started_at", writer.data["run"]["started_at"])
        writer.data["run"].update(started_at=started, resumed=resumed)
        # Rounds after the checkpoint are run again; every round up to it was read above, so none is lost.
        write_text(writer.rounds_path, "".join(_line(r) for r in rounds))
        evaluated = [r for r in rounds if r["evaluate"]["clients"]]
        writer.last_evaluate = evaluated[-1]["evaluate"] if evaluated else {}
        return writer

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        n = num_parameters(template)
        self.unseen = unseen_tasks(cfg)
        self.data["config"] = cfg.to_dict()
        self.data["tasks"] = {"all": list(cfg.data.tasks), "seen": list(seen_tasks(cfg)), "unseen": list(self.unseen)}
        if cfg.data.source != "node":  # a node's own files decide what it trains on: the server cannot know
            # How many clients train each task (at the start, before any drift): what stands behind a task's score.
            trained = [task for client in range(cfg.num_clients) for task in client_tasks(cfg, client)]
            self.data["tasks"]["train_clients"] = {task: trained.count(task) for task in cfg.data.tasks}
        self.data["adapter"] = {"num_tensors": len(template), "num_parameters": n, "tensor_bytes": 4 * n}
        self.data["strategy"] = strategy.summary()
        # Comparisons keep methods told each sample's true task apart from label-free ones.
        self.data["uses_task_labels"] = type(strategy).told_task_labels(self.data["config"]["method"])
        self.data["rounds_file"] = ROUNDS_FILE
        self._write(self.data)

    def on_round_end(self, record: RoundRecord) -> None:
        entry = round_to_json(record, self.unseen)
        # On the disk before the round's checkpoint is written (a later callback): a resume finds every round.
        append_text(self.rounds_path, _line(entry))
        if entry["evaluate"]["clients"]:
            self.last_evaluate = entry["evaluate"]

    def on_run_end(self, strategy: Strategy) -> None:
        self.data["run"].update(status="completed", finished_at=_now())
        self._finish(final=self.last_evaluate)

    def fail(self, reason: str) -> None:
        self.data["run"].update(status="failed", error=reason, finished_at=_now())
        self._finish()

    def _finish(self, **extra: Any) -> None:
        header = {k: v for k, v in self.data.items() if k != "rounds_file"}
        self._write({**header, **extra, "rounds": read_rounds(self.rounds_path)})
        self.rounds_path.unlink(missing_ok=True)

    def _write(self, data: dict[str, Any]) -> None:
        # Written beside, synced, then renamed: a reader (or a crash) never sees half a file.
        write_text(self.path, json.dumps(data, indent=1, allow_nan=True))


def _line(round_json: dict[str, Any]) -> str:
    return json.dumps(round_json, allow_nan=True, separators=(",", ":")) + "\n"


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The rounds of a ``rounds.jsonl``; a last line cut short by a stopped run is left out."""
    if not path.exists():
        return []
    rounds = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            rounds.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not a round record") from None
    return rounds


def load_results(run_dir: Path) -> dict[str, Any]:
    """A run's results as one dict, ``rounds`` included, whether the run finished or is still going.

    Raises
    ------
    OSError
        If ``run_dir`` has no ``results.json``.
    ValueError
        If it or the rounds file is not valid JSON.
    """
    data = json.loads((run_dir / RESULTS_FILE).read_text())
    if "rounds" not in data:
        data["rounds"] = read_rounds(run_dir / data.pop("rounds_file", ROUNDS_FILE))
    return data


def earlier_results(run_dir: Path, after_round: int) -> dict[str, Any]:
    """What a run being resumed after ``after_round`` recorded: its results, ``rounds`` included.

    Where ``results.json`` cannot be read (a crash while it was first written,
    a damaged copy), the rounds come from the run's per-round log
    (:data:`ROUNDS_FILE`) and the rest of the header is written anew.

    Raises
    ------
    CheckpointError
        If the rounds file is damaged, or a round up to ``after_round`` is in
        neither file: resuming would drop rounds without notice.
    """
    results_path, rounds_path = run_dir / RESULTS_FILE, run_dir / ROUNDS_FILE
    previous: dict[str, Any] | None
    reason = ""
    try:
        previous = json.loads(results_path.read_text())
        if not isinstance(previous, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        reason = (err.strerror if isinstance(err, OSError) else None) or f"{type(err).__name__}: {err}"
        previous = None
    if previous is not None and isinstance(previous.get("rounds"), list):
        rounds = [r for r in previous["rounds"] if isinstance(r, dict)]  # a run that ended holds its rounds
    else:
        try:
            rounds = read_rounds(rounds_path)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot resume: {err}; restore the file or start a new run") from None
        if previous is None:
            log.warning(
                "%s cannot be read (%s): the earlier rounds come from %s, the rest is written anew",
                results_path,
                reason,
                rounds_path,
            )
    recorded = {r.get("round") for r in rounds}
    missing = [r for r in range(1, after_round + 1) if r not in recorded]
    if missing:
        raise CheckpointError(
            f"cannot resume after round {after_round}: round(s) {_ranges(missing)} are in neither "
            f"{results_path} nor {rounds_path}; restore them or start a new run"
        )
    return {**(previous or {}), "rounds": rounds}


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ProgressLog:
    """One log line per round."""

    def __init__(self) -> None:
        self.num_rounds = 0

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        self.num_rounds = cfg.num_rounds
        log.info(
            "%s | %d clients | adapter %d tensors, %.1f KB",
            strategy.summary(),
            cfg.num_clients,
            len(template),
            4 * num_parameters(template) / 1024,
        )

    def on_round_end(self, record: RoundRecord) -> None:
        parts = [f"round {record.server_round}/{self.num_rounds}"]
        if record.train:
            losses = [m["train-loss"] for m in record.train.values() if m.get("train-steps", 0) > 0]
            parts.append(f"train loss {_mean(losses):.3f} ({len(record.train)} clients)")
        if record.evaluate:
            mean = summarize_evaluation(record.evaluate)["mean"]
            parts.append(f"eval loss {mean['loss']:.3f} score {mean['score']:.3f} em {mean['exact_match']:.3f}")
        if record.train:
            up = [ex.bytes_up for ex in record.traffic if ex.phase == "train"]
            parts.append(f"up {sum(up) / max(1, len(up)) / 1024:.1f} KB/client")
        if record.failures:
            parts.append(f"{len(record.failures)} failed")
        if record.privacy:
            parts.append(privacy_summary(record.privacy))
        parts.append(f"{record.seconds:.1f} s")
        log.info(" | ".join(parts))

    def on_run_end(self, strategy: Strategy) -> None:
        pass


class FinalTable:
    """Per-task table of the last evaluated round, logged at the end."""

    def __init__(self) -> None:
        self.last: dict[int, dict[str, float]] = {}

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        if record.evaluate:
            self.last = record.evaluate

    def on_run_end(self, strategy: Strategy) -> None:
        if not self.last:
            return
        for line in format_table(summarize_evaluation(self.last)).splitlines():
            log.info(line)


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of per-task metrics and their mean."""

    def row(name: str, n: str, m: dict[str, float]) -> str:
        metrics = f"{m['loss']:>8.3f}{m['exact_match']:>7.3f}{m['rouge1']:>8.3f}{m['rougeL']:>8.3f}"
        return f"{name:<14}{n:>6}{metrics}{m['score']:>7.3f}"

    header = f"{'task':<14}{'n':>6}{'loss':>8}{'em':>7}{'rouge1':>8}{'rougeL':>8}{'score':>7}"
    rows = [header, "-" * len(header)]
    rows += [row(task, f"{m['n']:.0f}", m) for task, m in summary["per_task"].items()]
    rows += ["-" * len(header), row("mean", "", summary["mean"])]
    return "\n".join(rows)
