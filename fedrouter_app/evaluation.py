"""Per-task evaluation: teacher-forced loss, exact match and ROUGE of greedy answers.

Scoring works per example, so a method may evaluate different examples with
different adapters (routing) and merge the scores afterwards; the per-task
summary is computed once, here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from fedrouter_app.data.encoding import (
    IGNORE_INDEX,
    EncodedExample,
    PromptFormat,
    collate,
    collate_prompts,
    encode_example,
    prompt_ids,
)
from fedrouter_app.data.example import Example
from fedrouter_app.model.adapter_model import AdapterModel
from fedrouter_app.training import MixingFn, sequence_losses

METRICS = ("loss", "exact_match", "rouge1", "rougeL")


@dataclass(frozen=True)
class ExampleScore:
    """Scores of one example."""

    task: str
    loss_sum: float
    tokens: int
    exact_match: float
    rouge1: float
    rougeL: float  # noqa: N815  (the metric's usual name)
    prediction: str


@dataclass(frozen=True)
class TaskMetrics:
    """Scores of one task on one client."""

    n: int
    loss: float
    exact_match: float
    rouge1: float
    rougeL: float  # noqa: N815

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "loss": self.loss,
            "exact_match": self.exact_match,
            "rouge1": self.rouge1,
            "rougeL": self.rougeL,
        }


@lru_cache(maxsize=1)
def _scorer() -> Any:
    # Imported on first use: rouge_score pulls in nltk, a second of start-up per worker.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


@torch.no_grad()
def score_examples(
    adapter_model: AdapterModel,
    examples: Sequence[Example],
    fmt: PromptFormat,
    *,
    batch_size: int,
    max_new_tokens: int,
    mixing: MixingFn | None = None,
) -> list[ExampleScore]:
    """Score ``examples`` with the adapters loaded in ``adapter_model`` (default slot, or ``mixing``)."""
    model, tokenizer, device = adapter_model.model, adapter_model.tokenizer, adapter_model.device
    model.eval()
    scores: list[ExampleScore] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate([encode_example(tokenizer, ex, fmt) for ex in chunk], tokenizer.pad_token_id)
        with adapter_model.mixing(mixing(chunk) if mixing else None):
            loss_sum, tokens = sequence_losses(model, {k: v.to(device) for k, v in batch.items()})
            predictions = generate(adapter_model, [fmt.prompt(ex) for ex in chunk], fmt, max_new_tokens)
        for ex, pred, ls, nt in zip(chunk, predictions, loss_sum.tolist(), tokens.tolist(), strict=True):
            rouge = _scorer().score(ex.response, pred)
            scores.append(
                ExampleScore(
                    task=ex.task,
                    loss_sum=ls,
                    tokens=nt,
                    exact_match=float(normalize(pred) == normalize(ex.response)),
                    rouge1=rouge["rouge1"].fmeasure,
                    rougeL=rouge["rougeL"].fmeasure,
                    prediction=pred,
                )
            )
    return scores


@torch.no_grad()
def mean_loss(
    adapter_model: AdapterModel,
    examples: Sequence[Example],
    fmt: PromptFormat,
    *,
    batch_size: int,
    mixing: MixingFn | None = None,
) -> float:
    """Teacher-forced loss per supervised token over ``examples`` (no generation)."""
    model, tokenizer, device = adapter_model.model, adapter_model.tokenizer, adapter_model.device
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate([encode_example(tokenizer, ex, fmt) for ex in chunk], tokenizer.pad_token_id)
        with adapter_model.mixing(mixing(chunk) if mixing else None):
            loss_sum, n = sequence_losses(model, {k: v.to(device) for k, v in batch.items()})
        total += float(loss_sum.sum())
        tokens += int(n.sum())
    return total / max(tokens, 1)


@torch.no_grad()
def text_loss(adapter_model: AdapterModel, texts: Sequence[str], *, batch_size: int) -> float:
    """Language-model loss per token of plain texts (e.g. prompts: their perplexity's log)."""
    tokenizer, device = adapter_model.tokenizer, adapter_model.device
    adapter_model.model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = []
        for text in texts[start : start + batch_size]:
            ids = prompt_ids(tokenizer, text)
            # Every token but the first is predicted from the ones before it.
            encoded.append(EncodedExample(input_ids=ids, labels=[IGNORE_INDEX, *ids[1:]]))
        batch = collate(encoded, tokenizer.pad_token_id)
        loss_sum, n = sequence_losses(adapter_model.model, {k: v.to(device) for k, v in batch.items()})
        total += float(loss_sum.sum())
        tokens += int(n.sum())
    return total / max(tokens, 1)


def generate(adapter_model: AdapterModel, prompts: Sequence[str], fmt: PromptFormat, max_new_tokens: int) -> list[str]:
    """Greedy answers to ``prompts`` (text after the prompt, up to EOS)."""
    tokenizer = adapter_model.tokenizer
    ids = [prompt_ids(tokenizer, p)[-(fmt.max_length - max_new_tokens) :] for p in prompts]
    batch = {k: v.to(adapter_model.device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
    out = adapter_model.model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def summarize(scores: Iterable[ExampleScore]) -> dict[str, TaskMetrics]:
    """Per-task means; the loss is the mean over supervised tokens."""
    by_task: dict[str, list[ExampleScore]] = defaultdict(list)
    for s in scores:
        by_task[s.task].append(s)
    summary = {}
    for task, rows in sorted(by_task.items()):
        n = len(rows)
        summary[task] = TaskMetrics(
            n=n,
            loss=sum(r.loss_sum for r in rows) / max(1, sum(r.tokens for r in rows)),
            exact_match=sum(r.exact_match for r in rows) / n,
            rouge1=sum(r.rouge1 for r in rows) / n,
            rougeL=sum(r.rougeL for r in rows) / n,
        )
    return summary
