"""Local supervised fine-tuning of the LoRA adapter: one small loop for every method.

Prompt tokens are masked out of the loss; AdamW is created fresh for every
call (as in the reference implementations); the learning rate is constant
within a call and follows the server's schedule across rounds. Batches are
drawn from a generator seeded by the caller's coordinates (run seed, client,
round, ...), and torch's global RNG (LoRA dropout) is seeded the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedrouter_app.data.encoding import IGNORE_INDEX, EncodedExample, PromptFormat, collate, encode_example
from fedrouter_app.data.example import Example
from fedrouter_app.model.loading import AdapterModel
from fedrouter_app.seeding import seed_torch, torch_generator

Regularizer = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class TrainStats:
    """What one call of :func:`train_adapter` did."""

    steps: int
    examples: int
    mean_loss: float
    seconds: float

    @classmethod
    def merge(cls, parts: Sequence[TrainStats]) -> TrainStats:
        """Totals of several calls (mean loss weighted by steps)."""
        steps = sum(p.steps for p in parts)
        loss = sum(p.mean_loss * p.steps for p in parts if p.steps) / steps if steps else float("nan")
        return cls(
            steps=steps, examples=sum(p.examples for p in parts), mean_loss=loss, seconds=sum(p.seconds for p in parts)
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


def sequence_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and number of supervised tokens, per row."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    per_token = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return per_token.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1)


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
    regularizer: Regularizer | None = None,
) -> TrainStats:
    """Train the adapter currently loaded in ``adapter_model`` in place.

    Parameters
    ----------
    adapter_model : AdapterModel
        Model whose LoRA slot holds the starting weights.
    examples : sequence of Example
        Training pool; batches are drawn from it.
    fmt : PromptFormat
        Prompt template and length limit.
    steps, batch_size, lr, weight_decay, max_grad_norm
        Optimisation settings (``max_grad_norm <= 0`` disables clipping).
    seed_parts : tuple
        Coordinates of this call, e.g. ``(seed, "train", client, round)``.
    regularizer : callable, optional
        Extra loss term added at every step (e.g. a proximal term).
    """
    start = time.perf_counter()
    if steps <= 0 or not examples:
        return TrainStats(steps=0, examples=0, mean_loss=float("nan"), seconds=0.0)
    tokenizer = adapter_model.tokenizer
    encoded: list[EncodedExample] = [encode_example(tokenizer, ex, fmt) for ex in examples]
    params = list(adapter_model.params.values())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch_generator(*seed_parts, "batches")
    seed_torch(*seed_parts, "dropout")
    model = adapter_model.model
    model.train()
    losses: list[float] = []
    seen = 0
    try:
        for rows in batch_indices(len(encoded), batch_size, steps, generator):
            batch = {
                k: v.to(adapter_model.device)
                for k, v in collate([encoded[i] for i in rows], tokenizer.pad_token_id).items()
            }
            loss_sum, tokens = sequence_losses(model, batch)
            loss = loss_sum.sum() / tokens.sum().clamp(min=1)
            total = loss + regularizer() if regularizer is not None else loss
            total.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            seen += len(rows)
    finally:
        model.eval()
    return TrainStats(
        steps=len(losses),
        examples=seen,
        mean_loss=sum(losses) / len(losses),
        seconds=time.perf_counter() - start,
    )
