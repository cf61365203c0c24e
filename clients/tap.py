"""TAP client: a regular and a personal model, the replacement rule, and final distillation.

Each model is a shared LoRA plus one LoRA per own task; an example of task k
runs through the shared LoRA and task k's (one batched pass, per-row mixing).
Task identity at test time is known (oracle); a task the client never had
uses the shared LoRA alone. The personal model and its per-task losses live in
``context.state``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from flwr.app import MetricRecord, RecordDict

from clients.base import ClientMethod
from fedrouter_app.client_env import RoundInfo
from fedrouter_app.data.example import Example
from fedrouter_app.evaluation import ExampleScore
from fedrouter_app.model.adapter_model import DEFAULT_SLOT
from fedrouter_app.model.lora import LoraState
from fedrouter_app.registry import register_client
from fedrouter_app.training import Teacher, TrainStats
from strategies.tap import SHARED, payload_name, reply_name, task_key

PERSONAL = "tap.personal"
PERSONAL_LOSSES = "tap.personal-losses"


def tasks_to_replace(regular: Mapping[str, float], personal: Mapping[str, float], margin: float) -> set[str]:
    """Tasks whose regular loss beats the personal one by more than ``margin`` (never-seen tasks always do)."""
    return {task for task, loss in regular.items() if loss + margin < personal.get(task, math.inf)}


def copy_paths(
    regular: Mapping[str, LoraState], personal: Mapping[str, LoraState], tasks: set[str]
) -> dict[str, LoraState]:
    """The personal model with task k's forward path (the shared LoRA and task k's) taken from the regular one."""
    out = dict(personal)
    for task in tasks:
        out[SHARED] = regular[SHARED]
        out[task_key(task)] = regular[task_key(task)]
    return out


@register_client("tap")
class TAPClient(ClientMethod):
    """Regular model synced with the server, personal model kept; distillation after the last round."""

    actions = ("query.keys",)

    def query_keys(self, content: RecordDict, info: RoundInfo) -> RecordDict:
        return RecordDict({"metrics": MetricRecord({f"key.{task}": 1 for task in self.env.data.tasks})})

    # Models as {key: adapter}, loaded into slots and mixed per example.

    def keys(self) -> list[str]:
        return [SHARED, *(task_key(t) for t in self.env.data.tasks)]

    def slot(self, key: str, prefix: str = "") -> str:
        if key == SHARED and not prefix:
            return DEFAULT_SLOT
        index = 0 if key == SHARED else 1 + self.env.data.tasks.index(key[len("task.") :])
        return f"tap_{prefix or 'model'}_{index}"

    def as_slots(self, model: Mapping[str, LoraState], prefix: str = "") -> dict[str, LoraState]:
        return {self.slot(key, prefix): state for key, state in model.items()}

    def from_slots(self, states: Mapping[str, LoraState], prefix: str = "") -> dict[str, LoraState]:
        return {key: states[self.slot(key, prefix)] for key in self.keys()}

    def mixing(self, prefix: str = "") -> Callable[[Sequence[Example]], dict[str, torch.Tensor]]:
        own = self.env.data.tasks

        def weights(chunk: Sequence[Example]) -> dict[str, torch.Tensor]:
            out = {self.slot(SHARED, prefix): torch.ones(len(chunk))}
            for task in own:
                out[self.slot(task_key(task), prefix)] = torch.tensor([float(ex.task == task) for ex in chunk])
            return out

        return weights

    def regular(self, content: RecordDict) -> dict[str, LoraState]:
        """The server's values of this client's keys (the initial adapter for keys it has none of yet)."""
        return {
            key: self.env.read_adapter(content, payload_name(key))
            if payload_name(key) in content.array_records
            else self.env.initial_adapter()
            for key in self.keys()
        }

    def personal(self) -> dict[str, LoraState] | None:
        stored = {key: self.env.load_adapter_state(f"{PERSONAL}.{key}") for key in self.keys()}
        return None if any(v is None for v in stored.values()) else stored  # type: ignore[return-value]

    def train_model(
        self, model: Mapping[str, LoraState], info: RoundInfo, stream: int, **kwargs: Any
    ) -> tuple[dict[str, LoraState], TrainStats]:
        """Train every LoRA of a model together, each example through the shared LoRA and its task's."""
        slots = self.as_slots(model)
        trained, stats = self.env.train_slots(
            slots, info, trainable=list(slots), mixing=self.mixing(), stream=stream, **kwargs
        )
        return self.from_slots(trained), stats

    # Stage 1.

    def train(self, content: RecordDict, info: RoundInfo) -> RecordDict:
        regular, stats = self.train_model(self.regular(content), info, stream=0)
        personal = self.personal() or {key: self.env.initial_adapter() for key in self.keys()}
        history = dict(self.env.state.metric_records.get(PERSONAL_LOSSES, MetricRecord()))
        replaced = tasks_to_replace(stats.task_losses, history, self.env.cfg.method.margin)
        personal = copy_paths(regular, personal, replaced)
        # After a replacement the personal model draws another data subset this round (as TAP's code does).
        personal, personal_stats = self.train_model(personal, info, stream=2 if replaced else 1)
        self.store_personal(personal, personal_stats.task_losses)
        extra = {"replaced": len(replaced), "personal-loss": personal_stats.mean_loss}
        return self.env.train_reply(stats, {reply_name(k): v for k, v in regular.items()}, extra)

    def store_personal(self, personal: Mapping[str, LoraState], losses: Mapping[str, float]) -> None:
        for key, state in personal.items():
            self.env.save_adapter_state(f"{PERSONAL}.{key}", state)
        self.env.state[PERSONAL_LOSSES] = MetricRecord(dict(losses))

    # Evaluation, and stage 2 after the last round.

    def evaluate(self, content: RecordDict, info: RoundInfo) -> RecordDict:
        regular = self.regular(content)
        personal = self.personal()
        models = {"regular": regular}
        if info.server_round == info.num_rounds and personal is not None:
            personal, models["teacher"] = self.distil(regular, personal, info)
        if personal is not None:
            models["personal"] = personal
        views = self.score_views(models)
        primary = views.pop("personal", views["regular"])
        return self.env.evaluate_reply(primary, views=views)

    def distil(
        self, regular: Mapping[str, LoraState], personal: Mapping[str, LoraState], info: RoundInfo
    ) -> tuple[dict[str, LoraState], dict[str, LoraState]]:
        """Teacher: the final regular model fine-tuned locally. Student: the personal model, with KD."""
        method = self.env.cfg.method
        steps, lr = method.distill_steps, method.distill_lr
        teacher, _ = self.train_model(regular, info, stream=3, steps=steps, lr=lr)
        student_slots = self.as_slots(personal)
        trained, _ = self.env.train_slots(
            {**student_slots, **self.as_slots(teacher, prefix="teacher")},
            info,
            trainable=list(student_slots),
            mixing=self.mixing(),
            stream=4,
            steps=steps,
            lr=lr,
            teacher=Teacher(mixing=self.mixing("teacher"), weight=method.kd_weight, temperature=method.temperature),
        )
        distilled = self.from_slots(trained)
        for key, state in distilled.items():
            self.env.save_adapter_state(f"{PERSONAL}.{key}", state)
        return distilled, teacher

    def score(self, model: Mapping[str, LoraState]) -> list[ExampleScore]:
        """Scores of the test set, each example through the shared LoRA and (if own) its task's."""
        slots = self.as_slots(model)
        return self.env.score(
            self.env.data.test,
            slots.pop(DEFAULT_SLOT),
            others=slots,
            mixing=self.mixing(),
        )

    def score_views(self, models: Mapping[str, Mapping[str, LoraState]]) -> dict[str, list[ExampleScore]]:
        """Scores of the test set under each model, every model's rows in one set of batches."""
        if not self.env.cfg.speed.eval_batching:
            return {name: self.score(model) for name, model in models.items()}
        test = self.env.data.test
        rows = [ex for _ in models for ex in test]
        states: dict[str, LoraState] = {}
        weights: dict[str, torch.Tensor] = {}
        for v, model in enumerate(models.values()):
            view = slice(v * len(test), (v + 1) * len(test))
            prefix = f"view{v}"
            for key, state in model.items():
                slot = self.slot(key, prefix)
                states[slot] = state
                weights[slot] = torch.zeros(len(rows))
                weights[slot][view] = self.mixing(prefix)(test)[slot]
        scores = self.env.score_mixed(rows, states, weights)
        return {name: scores[v * len(test) : (v + 1) * len(test)] for v, name in enumerate(models)}
