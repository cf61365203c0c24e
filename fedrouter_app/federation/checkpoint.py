"""Checkpoints: the server's state every few rounds, each client's state on its own disk, resuming.

The server writes ``<run dir>/checkpoint/round-<k>/`` after round ``k``:
``state.safetensors`` (every adapter and array the strategy holds) and
``state.json`` (the strategy's other state, the round, the config
fingerprint and the run key). Random state needs no saving: every random
choice derives from (seed, client, round).

Clients that keep private state across rounds (personal adapters, local
clusters) write ``context.state`` to their own disk, under
``checkpoint.client_dir/<run key>/client-<id>/round-<r>/``, so that a
resumed run, which Flower gives a fresh context, continues where each client
was. Nothing of it travels: the server only tells clients the run key and the
last round it has checkpointed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedrouter_app.durable import replace_folder
from fedrouter_app.logs import get_logger
from fedrouter_app.model.lora import LoraState, LoraTemplate

if TYPE_CHECKING:
    from fedrouter_app.federation.exchange import RoundRecord
    from fedrouter_app.schema.settings import RunConfig
    from fedrouter_app.strategies.base import Strategy

log = get_logger(__name__)

CHECKPOINT_DIR = "checkpoint"
TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"
FORMAT = 1
# Keys of the shared config every message carries when checkpoints are on.
RUN_KEY = "run-key"
CHECKPOINT_ROUND = "checkpoint-round"
# Marks a client's context.state as belonging to a run (a fresh context lacks it).
STATE_MARKER = "fedrouter.run-key"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or belongs to another configuration."""


@dataclass
class StrategyState:
    """What a strategy needs to continue a run.

    Attributes
    ----------
    adapters : dict
        Named LoRA states (full or partial adapters).
    arrays : dict
        Named NumPy arrays (centroids, ...).
    meta : dict
        Everything else, JSON-serialisable (dict keys become strings).
    """

    adapters: dict[str, LoraState] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded server checkpoint."""

    server_round: int
    run_key: str
    fingerprint: str
    state: StrategyState


def _tensor_index(state: StrategyState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    # Positional tensor names keep arbitrary adapter and parameter names out of safetensors keys.
    tensors: dict[str, np.ndarray] = {}
    index: dict[str, Any] = {"adapters": {}, "arrays": {}}
    for name, adapter in state.adapters.items():
        index["adapters"][name] = {}
        for key, value in adapter.items():
            tensors[f"t{len(tensors)}"] = np.ascontiguousarray(value)
            index["adapters"][name][key] = f"t{len(tensors) - 1}"
    for name, value in state.arrays.items():
        tensors[f"t{len(tensors)}"] = np.ascontiguousarray(value)
        index["arrays"][name] = f"t{len(tensors) - 1}"
    return tensors, index


def save_checkpoint(
    directory: Path, server_round: int, state: StrategyState, run_key: str, fingerprint: str, keep: int
) -> Path:
    """Write ``state`` as the checkpoint of ``server_round``, atomically and durably; keep the newest ``keep``.

    The checkpoint is written to a hidden folder beside it, synced to the disk
    and renamed (:func:`~fedrouter_app.durable.replace_folder`); older ones go
    only then, so a write cut short leaves the previous checkpoint as it was.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"round-{server_round:05d}"
    tmp = directory / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, index = _tensor_index(state)
    save_file(tensors, str(tmp / TENSORS_FILE))
    meta = {
        "format": FORMAT,
        "round": server_round,
        "run_key": run_key,
        "fingerprint": fingerprint,
        "index": index,
        "meta": state.meta,
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    replace_folder(tmp, target)
    for old in sorted(directory.glob("round-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, if any."""
    done = sorted(p for p in directory.glob("round-*") if (p / META_FILE).is_file() and (p / TENSORS_FILE).is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, template: LoraTemplate) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, checking adapters against ``template``."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        tensors = load_file(str(path / TENSORS_FILE))
        index = meta["index"]
        adapters = {name: {key: tensors[ref] for key, ref in refs.items()} for name, refs in index["adapters"].items()}
        arrays = {name: tensors[ref] for name, ref in index["arrays"].items()}
        checkpoint = Checkpoint(
            server_round=int(meta["round"]),
            run_key=str(meta["run_key"]),
            fingerprint=str(meta["fingerprint"]),
            state=StrategyState(adapters=adapters, arrays=arrays, meta=meta["meta"]),
        )
    except (OSError, KeyError, TypeError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    for name, adapter in adapters.items():
        for key, value in adapter.items():
            if template.get(key) != tuple(value.shape):
                raise CheckpointError(
                    f"checkpoint {path}: adapter {name!r} tensor {key} has shape {tuple(value.shape)}, "
                    f"the run's LoRA expects {template.get(key)}"
                )
    return checkpoint


def last_checkpoint_round(completed_round: int, every: int, first: int = 1) -> int:
    """The newest round <= ``completed_round`` that has a server checkpoint (-1: none)."""
    if every <= 0:
        return -1
    last = completed_round - completed_round % every
    return last if last >= first else -1


class Checkpointer:
    """Round-loop callback that writes the strategy's state every ``checkpoint.every`` rounds."""

    def __init__(self, run_dir: Path, run_key: str, fingerprint: str) -> None:
        self.directory = run_dir / CHECKPOINT_DIR
        self.run_key = run_key
        self.fingerprint = fingerprint
        self.strategy: Strategy | None = None
        self.every = 0
        self.keep = 1

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        self.strategy, self.every, self.keep = strategy, cfg.checkpoint.every, cfg.checkpoint.keep

    def on_round_end(self, record: RoundRecord) -> None:
        r = record.server_round
        if self.strategy is None or last_checkpoint_round(r, self.every) != r:
            return
        path = save_checkpoint(self.directory, r, self.strategy.state_dict(), self.run_key, self.fingerprint, self.keep)
        log.debug("checkpoint %s", path)

    def on_run_end(self, strategy: Strategy) -> None:
        pass


# Client state on the client's own disk.


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def save_record_dict(records: RecordDict, directory: Path) -> None:
    """Write a RecordDict as safetensors (arrays) plus JSON (configs, metrics), atomically and durably."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict[str, np.ndarray] = {}
    entries = []
    for name, record in records.items():
        if isinstance(record, ArrayRecord):
            refs = {}
            for key in record:
                tensors[f"t{len(tensors)}"] = np.ascontiguousarray(record[key].numpy())
                refs[key] = f"t{len(tensors) - 1}"
            entries.append({"name": name, "kind": "array", "items": refs})
        else:
            kind = "config" if isinstance(record, ConfigRecord) else "metric"
            entries.append({"name": name, "kind": kind, "items": {k: _encode(v) for k, v in record.items()}})
    save_file(tensors, str(tmp / TENSORS_FILE))
    (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, "records": entries}))
    replace_folder(tmp, directory)


def load_record_dict(directory: Path) -> RecordDict:
    """Read what :func:`save_record_dict` wrote."""
    meta = json.loads((directory / META_FILE).read_text())
    tensors = load_file(str(directory / TENSORS_FILE))
    out = RecordDict()
    for entry in meta["records"]:
        items: Mapping[str, Any] = entry["items"]
        if entry["kind"] == "array":
            out[entry["name"]] = ArrayRecord({k: Array(tensors[ref]) for k, ref in items.items()})
        elif entry["kind"] == "config":
            out[entry["name"]] = ConfigRecord({k: _decode(v) for k, v in items.items()})
        else:
            out[entry["name"]] = MetricRecord(dict(items))
    return out


class ClientStateStore:
    """One client's saved ``context.state`` for one run, one directory per round."""

    def __init__(self, root: Path, run_key: str, client: int) -> None:
        self.run_key = run_key
        self.directory = root.expanduser() / run_key / f"client-{client}"

    def _rounds(self) -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in self.directory.glob("round-*") if (p / META_FILE).is_file())

    def save(self, state: RecordDict, server_round: int, durable_round: int) -> None:
        """Save ``state`` as of ``server_round``; drop what no checkpoint can resume to.

        Kept: the newest state at or before the server's last checkpoint, and
        newer ones. Dropped: older ones, and any after ``server_round`` (left by
        an interrupted run that this one has resumed).
        """
        save_record_dict(state, self.directory / f"round-{server_round:05d}")
        rounds = self._rounds()
        keep_from = max((r for r in rounds if r <= durable_round), default=min(rounds))
        for r in rounds:
            if r < keep_from or r > server_round:
                shutil.rmtree(self.directory / f"round-{r:05d}", ignore_errors=True)

    def load(self, max_round: int) -> RecordDict | None:
        """The newest state saved at or before ``max_round``, if any."""
        rounds = [r for r in self._rounds() if r <= max_round]
        return load_record_dict(self.directory / f"round-{rounds[-1]:05d}") if rounds else None

    def clear(self) -> None:
        """Forget this run's state (the run is over)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        # Other workers of the same node clear their clients at the same moment: whoever finds the run's
        # folder empty removes it, and losing that race (gone already, or refilled) is fine.
        with contextlib.suppress(OSError):
            if not any(self.directory.parent.iterdir()):
                self.directory.parent.rmdir()
