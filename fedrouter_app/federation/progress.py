"""Loop callbacks for watching a run: a progress bar over rounds and TensorBoard scalars.

Both cost nothing when unused: the bar switches itself off when stderr is not
a terminal (logs, ``flwr run --stream``, sweeps piped to a file), and the
TensorBoard writer does nothing unless the optional ``tensorboard`` package is
installed (``pip install -e ".[tensorboard]"``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from fedrouter_app.data.partition import unseen_tasks
from fedrouter_app.federation.exchange import RoundRecord
from fedrouter_app.federation.results import summarize_evaluation
from fedrouter_app.schema.settings import RunConfig

if TYPE_CHECKING:
    from fedrouter_app.model.lora import LoraTemplate
    from fedrouter_app.strategies.base import Strategy

TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    """Whether the optional ``tensorboard`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


class RoundProgress:
    """A tqdm bar over rounds, with the latest evaluation score as its postfix.

    tqdm stacks it under any bar already open (the sweep launcher's job bar).
    """

    def __init__(self) -> None:
        self.bar: Any = None

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        total = cfg.num_rounds + (1 if cfg.eval.at_start else 0)
        desc = f"{cfg.method.name} {cfg.scenario.name} s{cfg.seed}"
        # disable=None: off when stderr is not a terminal, so logs stay clean.
        self.bar = tqdm(total=total, desc=desc, unit="round", leave=False, disable=None)

    def on_round_end(self, record: RoundRecord) -> None:
        if self.bar is None:
            return
        if record.evaluate:
            mean = summarize_evaluation(record.evaluate)["mean"]
            self.bar.set_postfix(score=f"{mean['score']:.3f}", refresh=False)
        self.bar.update(1)

    def on_run_end(self, strategy: Strategy) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardLog:
    """Per-round scalars in ``<run_dir>/tensorboard`` when TensorBoard is installed.

    Writes the learning rate, mean training loss, seconds, bytes per client
    and, on evaluated rounds, the pooled loss and score (all tasks, own,
    other, seen, unseen, and per task). Without TensorBoard every hook
    returns at once.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.enabled = tensorboard_available()
        self.writer: Any = None
        self.unseen: tuple[str, ...] = ()

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        if not self.enabled:
            return
        # Imported here: torch's TensorBoard bridge pulls in tensorboard, which is optional.
        from torch.utils.tensorboard import SummaryWriter

        self.unseen = unseen_tasks(cfg)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        self.writer.add_text("run", f"{cfg.method.name} / {cfg.scenario.name} / seed {cfg.seed}", 0)

    def on_round_end(self, record: RoundRecord) -> None:
        if self.writer is None:
            return
        for tag, value in round_scalars(record, self.unseen).items():
            self.writer.add_scalar(tag, value, record.server_round)
        self.writer.flush()

    def on_run_end(self, strategy: Strategy) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def round_scalars(record: RoundRecord, unseen: tuple[str, ...] = ()) -> dict[str, float]:
    """The scalars of one round, by TensorBoard tag (``unseen``: tasks no client trains on)."""
    out: dict[str, float] = {"round/lr": record.lr, "round/seconds": record.seconds}
    losses = [m["train-loss"] for m in record.train.values() if m.get("train-steps", 0) > 0]
    if losses:
        out["train/loss"] = sum(losses) / len(losses)
    clients = {ex.client for ex in record.traffic}
    if clients:
        out["bytes/up_per_client"] = sum(ex.bytes_up for ex in record.traffic) / len(clients)
        out["bytes/down_per_client"] = sum(ex.bytes_down for ex in record.traffic) / len(clients)
    if record.evaluate:
        summary = summarize_evaluation(record.evaluate, unseen=unseen)
        for group in ("", "own_", "other_", "seen_", "unseen_"):
            for metric in ("loss", "score"):
                value = summary[f"{group}mean"].get(metric)
                if value is not None:
                    out[f"eval/{group}{metric}"] = value
        for task, m in summary["per_task"].items():
            out[f"task/{task}"] = m["score"]
    return out
