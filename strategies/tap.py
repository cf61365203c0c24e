"""TAP: two-stage adaptive personalisation, text multi-task variant (Lee et al., arXiv 2509.26524).

Every client holds a shared LoRA and one LoRA per task it has; the server
holds the union of these keys and averages each key over the clients that
hold it, weighted by their data size. Clients send and receive only their own
keys. Personal models, the replacement rule and the final distillation live
on the clients (``clients/tap.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict

from fedrouter_app.aggregation import WeightedMean
from fedrouter_app.checkpoint import StrategyState
from fedrouter_app.model.lora import LoraState, LoraTemplate
from fedrouter_app.records import NUM_EXAMPLES, adapter_record
from fedrouter_app.registry import MethodConfig, register_strategy
from fedrouter_app.rounds import Communicator, Reply
from fedrouter_app.settings import RunConfig, require
from strategies.base import Strategy

KEYS = "query.keys"
SHARED = "shared"


def task_key(task: str) -> str:
    """The key of a task's LoRA."""
    return f"task.{task}"


def payload_name(key: str) -> str:
    """Record name of a key's adapter in instructions."""
    return f"tap.{key}"


def reply_name(key: str) -> str:
    """Record name of a key's adapter in replies."""
    return f"adapter.{key}"


def average_by_key(
    uploads: Sequence[tuple[Mapping[str, LoraState], float]], bank: Mapping[str, LoraState]
) -> dict[str, LoraState]:
    """Key-wise weighted mean over the clients holding each key; keys nobody sent keep their value."""
    means: dict[str, WeightedMean] = defaultdict(WeightedMean)
    for adapters, weight in uploads:
        for key, state in adapters.items():
            means[key].add(state, weight)
    return {**bank, **{key: mean.result() for key, mean in means.items()}}


@dataclass
class TAPConfig(MethodConfig):
    """Settings of ``tap``."""

    margin: float = field(metadata={"help": "m: task k's path is copied into the personal model when L_G + m < L_P."})
    distill_steps: int = field(metadata={"help": "Steps of the final stage: teacher fine-tuning, then distillation."})
    distill_lr: float = field(metadata={"help": "Learning rate of the final stage."})
    kd_weight: float = field(metadata={"help": "lambda: weight of T^2 * KL(teacher || student) in distillation."})
    temperature: float = field(metadata={"help": "T: distillation temperature."})

    def validate(self) -> None:
        require(self.margin >= 0, "method.margin must be >= 0")
        require(self.distill_steps >= 0 and self.distill_lr > 0, "need method.distill_steps >= 0, distill_lr > 0")
        require(self.kd_weight >= 0 and self.temperature > 0, "need method.kd_weight >= 0 and temperature > 0")


@register_strategy("tap", config=TAPConfig)
class TAP(Strategy):
    """Union of keys on the server, key-wise averaging over holders, per-client key sets on the wire."""

    uses_task_labels = True  # task keys are the true tasks, in training and at test time

    def __init__(self, cfg: RunConfig, template: LoraTemplate) -> None:
        super().__init__(cfg, template)
        self.bank: dict[str, LoraState] = {}
        self.keys: dict[int, list[str]] = {}

    def setup(self, comm: Communicator, clients: Sequence[int]) -> dict[str, Any]:
        self.discover(clients)
        return {"keys": {str(c): k for c, k in sorted(self.keys.items())}}

    def discover(self, clients: Sequence[int]) -> None:
        """Ask clients not seen yet which keys (tasks) they hold."""
        new = [c for c in clients if c not in self.keys]
        if not new:
            return
        assert self.comm is not None, "the round loop attaches its communicator"
        for reply in self.comm.send(KEYS, {c: RecordDict() for c in new}):
            tasks = sorted(k[len("key.") :] for k, v in reply.metrics.items() if k.startswith("key.") and v)
            # Keys become server adapters: only the run's tasks, or a client could make the server hold any number.
            unknown = [t for t in tasks if t not in self.cfg.data.tasks]
            if unknown:
                self.comm.reject(KEYS, reply.client, f"keys name tasks not in this run: {unknown[:3]}")
                continue
            self.keys[reply.client] = [SHARED, *(task_key(t) for t in tasks)]

    def _payloads(self, clients: Sequence[int]) -> dict[int, RecordDict]:
        self.discover(clients)
        records = {key: adapter_record(state) for key, state in self.bank.items()}
        return {
            c: RecordDict({payload_name(k): records[k] for k in self.keys[c] if k in records})
            for c in clients
            if c in self.keys
        }

    def configure_train(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        return self._payloads(clients)

    def max_reply_adapters(self) -> int:
        # The shared LoRA and one per task the client holds.
        return 1 + len(self.cfg.data.tasks)

    def check_train_reply(self, server_round: int, reply: Reply) -> None:
        for key in self.keys.get(reply.client, [SHARED]):
            self.require_adapter(reply, reply_name(key))

    def aggregate_train(self, server_round: int, replies: Sequence[Reply]) -> dict[str, Any]:
        uploads = [
            ({k: r.adapters[reply_name(k)] for k in self.keys[r.client]}, float(r.metrics[NUM_EXAMPLES]))
            for r in replies
        ]
        self.bank = average_by_key(uploads, self.bank)
        replaced = {str(r.client): int(r.metrics.get("replaced", 0)) for r in replies}
        return {"replaced_tasks": replaced}

    def configure_evaluate(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        return self._payloads(clients)

    def state_dict(self) -> StrategyState:
        return StrategyState(adapters=dict(self.bank), meta={"keys": {str(c): k for c, k in self.keys.items()}})

    def load_state_dict(self, state: StrategyState) -> None:
        self.bank = dict(state.adapters)
        self.keys = {int(c): list(k) for c, k in state.meta["keys"].items()}

    def adapters(self) -> dict[str, LoraState]:
        return dict(self.bank)

    def summary(self) -> str:
        m = self.cfg.method
        return f"TAP(margin={m.margin}, distill_steps={m.distill_steps}, kd_weight={m.kd_weight}, T={m.temperature})"
