"""Local supervised fine-tuning of LoRA adapters: one small loop for every method.

Prompt tokens are masked out of the loss; AdamW is created fresh for every
call (as in the reference implementations); the learning rate is constant
within a call and follows the server's schedule across rounds. Batches are
drawn from a generator seeded by the caller's coordinates (run seed, client,
round, stream), and torch's global RNG (LoRA dropout) is seeded the same way.

Methods that combine adapters train some slots while others take part frozen
(``slots`` and ``mixing``); methods that distil pass a ``teacher``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedrouter_app.data.encoding import EncodedExample, PromptFormat, encode_example
from fedrouter_app.data.example import Example
from fedrouter_app.model.adapter_model import DEFAULT_SLOT, AdapterModel, Mixing
from fedrouter_app.model.forward import ScoredTokens, scored_tokens
from fedrouter_app.schema.learning import SpeedSettings
from fedrouter_app.seeding import seed_torch, torch_generator

Regularizer = Callable[[], torch.Tensor]
MixingFn = Callable[[Sequence[Example]], Mixing]


@dataclass(frozen=True)
class Teacher:
    """Knowledge distillation: ``loss += weight * T^2 * KL(teacher || student)`` on response tokens.

    Attributes
    ----------
    mixing : callable
        The slots (and weights) that make the teacher, per batch.
    weight : float
        lambda.
    temperature : float
        T; both distributions are softened by it.
    """

    mixing: MixingFn
    weight: float
    temperature: float


@dataclass(frozen=True)
class TrainStats:
    """What one call of :func:`train_adapter` did."""

    steps: int
    examples: int
    mean_loss: float
    seconds: float
    task_losses: dict[str, float] = field(default_factory=dict)
    tokens: int = 0

    @classmethod
    def merge(cls, parts: Sequence[TrainStats]) -> TrainStats:
        """Totals of several calls (mean loss weighted by steps)."""
        steps = sum(p.steps for p in parts)
        loss = sum(p.mean_loss * p.steps for p in parts if p.steps) / steps if steps else float("nan")
        tasks: dict[str, float] = {}
        for part in parts:
            tasks.update(part.task_losses)
        return cls(
            steps=steps,
            examples=sum(p.examples for p in parts),
            mean_loss=loss,
            seconds=sum(p.seconds for p in parts),
            task_losses=tasks,
            tokens=sum(p.tokens for p in parts),
        )


def learning_rate(schedule: str, lr: float, lr_min: float, server_round: int, num_rounds: int) -> float:
    """Learning rate of ``server_round`` (1-based): constant or cosine from lr to lr_min."""
    if schedule == "constant" or num_rounds <= 1:
        return lr
    progress = (server_round - 1) / (num_rounds - 1)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """``steps`` batches drawn without replacement, reshuffling at each epoch."""
    order: list[int] = []
    for _ in range(steps):
        batch: list[int] = []
        while len(batch) < min(batch_size, n):
            if not order:
                order = torch.randperm(n, generator=generator).tolist()
            batch.append(order.pop())
        yield batch


TokenPass = Callable[[Sequence[EncodedExample]], ScoredTokens]


def token_pass(adapter_model: AdapterModel, speed: SpeedSettings) -> TokenPass:
    """Teacher-forced passes over encoded rows on ``adapter_model``, with the speed-ups ``speed`` allows."""
    cache = adapter_model.prefix_cache(speed.prefix_cache_mb << 20) if speed.prefix_cache else None

    def run(rows: Sequence[EncodedExample]) -> ScoredTokens:
        return scored_tokens(
            adapter_model.model,
            rows,
            adapter_model.tokenizer.pad_token_id,
            adapter_model.device,
            scored_only=speed.scored_logits_only,
            cache=cache,
            autocast=adapter_model.autocast_dtype,
        )

    return run


def distillation_loss(student: ScoredTokens, teacher: ScoredTokens, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over supervised tokens."""
    t = F.log_softmax(teacher.scored_logits() / temperature, dim=-1)
    s = F.log_softmax(student.scored_logits() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="sum") / max(s.shape[0], 1)
    return kl * temperature**2


def train_adapter(
    adapter_model: AdapterModel,
    examples: Sequence[Example],
    fmt: PromptFormat,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float,
    seed_parts: tuple[int | str, ...],
    slots: Sequence[str] = (DEFAULT_SLOT,),
    mixing: MixingFn | None = None,
    regularizer: Regularizer | None = None,
    teacher: Teacher | None = None,
    speed: SpeedSettings | None = None,
) -> TrainStats:
    """Train the adapters loaded in ``slots`` of ``adapter_model`` in place.

    Parameters
    ----------
    adapter_model : AdapterModel
        Model whose slots hold the starting weights.
    examples : sequence of Example
        Training pool; batches are drawn from it.
    fmt : PromptFormat
        Prompt template and length limit.
    steps, batch_size, lr, weight_decay, max_grad_norm
        Optimisation settings (``max_grad_norm <= 0`` disables clipping).
    seed_parts : tuple
        Coordinates of this call, e.g. ``(seed, "train", client, round, stream)``.
    slots : sequence of str
        Slots whose parameters are trained; every other parameter is frozen.
    mixing : callable, optional
        Per batch, which slots take part in the forward pass and with what
        weight (default: the default slot alone).
    regularizer : callable, optional
        Extra loss term added at every step (e.g. a proximal term).
    teacher : Teacher, optional
        Adds a distillation term towards the teacher's predictions.
    speed : SpeedSettings, optional
        Which exact speed-ups the forward passes use (default: all).
    """
    start = time.perf_counter()
    if steps <= 0 or not examples:
        return TrainStats(steps=0, examples=0, mean_loss=float("nan"), seconds=0.0)
    tokenizer = adapter_model.tokenizer
    encoded: list[EncodedExample] = [encode_example(tokenizer, ex, fmt) for ex in examples]
    params = [p for slot in slots for p in adapter_model.slots[slot].values()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # float16 autocast can underflow small gradients: scale the loss (a no-op otherwise). The scaler
    # is new in every call, so it starts low: from torch's 2**16 the first steps of each call overflow
    # and are skipped.
    scaler = torch.amp.GradScaler(
        adapter_model.device.type, init_scale=2.0**10, enabled=adapter_model.autocast_dtype == torch.float16
    )
    generator = torch_generator(*seed_parts, "batches")
    seed_torch(*seed_parts, "dropout")
    model = adapter_model.model
    forward = token_pass(adapter_model, speed or SpeedSettings())
    losses: list[float] = []
    task_sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    seen = 0
    trained_tokens = 0
    with _only_trainable(adapter_model, params):
        model.train()
        try:
            for rows in batch_indices(len(encoded), batch_size, steps, generator):
                chunk = [examples[i] for i in rows]
                batch_rows = [encoded[i] for i in rows]
                with adapter_model.mixing(mixing(chunk) if mixing else None):
                    scored = forward(batch_rows)
                loss_sum, tokens = scored.row_losses()
                loss = loss_sum.sum() / tokens.sum().clamp(min=1)
                total = loss
                if teacher is not None:
                    with torch.no_grad(), adapter_model.mixing(teacher.mixing(chunk)):
                        teacher_scored = forward(batch_rows)
                    total = total + teacher.weight * distillation_loss(scored, teacher_scored, teacher.temperature)
                if regularizer is not None:
                    total = total + regularizer()
                scaler.scale(total).backward()
                if max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                seen += len(rows)
                trained_tokens += sum(len(row.input_ids) for row in batch_rows)
                for ex, ls, nt in zip(chunk, loss_sum.tolist(), tokens.tolist(), strict=True):
                    task_sums[ex.task][0] += ls
                    task_sums[ex.task][1] += nt
        finally:
            model.eval()
    return TrainStats(
        steps=len(losses),
        examples=seen,
        mean_loss=sum(losses) / len(losses),
        seconds=time.perf_counter() - start,
        task_losses={task: s / max(n, 1.0) for task, (s, n) in sorted(task_sums.items())},
        tokens=trained_tokens,
    )


class _only_trainable:  # noqa: N801  (a context manager used like a function)
    """Gradients for ``params`` only, for the duration of a training call."""

    def __init__(self, adapter_model: AdapterModel, params: list[torch.nn.Parameter]) -> None:
        self.params = {id(p) for p in params}
        self.lora = [p for slot in adapter_model.slots.values() for p in slot.values()]
        self.flags: list[bool] = []

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.lora]
        for p in self.lora:
            p.requires_grad_(id(p) in self.params)
            p.grad = None

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.lora, self.flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
