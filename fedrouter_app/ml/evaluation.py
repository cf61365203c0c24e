"""Per-task evaluation: teacher-forced loss, exact match and ROUGE of greedy (or chosen) answers.

Scoring works per row, and every row may carry its own mix of adapter slots,
so a method that evaluates examples under different adapters (routing, task
slots, several views of one model) scores them all in one set of full
batches; the per-task summary is computed once, here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch

from fedrouter_app.data.encoding import (
    IGNORE_INDEX,
    EncodedExample,
    PromptFormat,
    collate_prompts,
    encode_example,
    prompt_ids,
    response_ids,
)
from fedrouter_app.data.example import Example
from fedrouter_app.ml.prefill import cut_at, fits, score_and_generate, score_choices
from fedrouter_app.ml.training import token_pass
from fedrouter_app.model.adapter_model import AdapterModel, Mixing
from fedrouter_app.schema.learning import SpeedSettings

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


def _slice(weights: Mixing | None, rows: Sequence[int]) -> Mixing | None:
    """The mixing of a subset of rows (per-row weights are indexed, scalars kept)."""
    if weights is None:
        return None
    index = torch.tensor(list(rows), dtype=torch.long)
    return {slot: w[index] if isinstance(w, torch.Tensor) else w for slot, w in weights.items()}


def _batches(lengths: Sequence[Any], batch_size: int, by_length: bool) -> list[list[int]]:
    """Row indices in batches: consecutive, or sorted by length (less padding; rows are independent)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if by_length else list(range(len(lengths)))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def row_losses(
    adapter_model: AdapterModel,
    encoded: Sequence[EncodedExample],
    *,
    batch_size: int,
    weights: Mixing | None = None,
    speed: SpeedSettings | None = None,
) -> tuple[list[float], list[int]]:
    """Summed teacher-forced loss and scored tokens of each encoded row (``weights``: the mixing per row)."""
    speed = speed or SpeedSettings()
    adapter_model.model.eval()
    forward = token_pass(adapter_model, speed)
    sums, counts = [0.0] * len(encoded), [0] * len(encoded)
    for rows in _batches([len(e.input_ids) for e in encoded], batch_size, speed.eval_batching):
        with adapter_model.mixing(_slice(weights, rows)):
            loss_sum, tokens = forward([encoded[i] for i in rows]).row_losses()
        for i, ls, nt in zip(rows, loss_sum.tolist(), tokens.tolist(), strict=True):
            sums[i], counts[i] = ls, nt
    return sums, counts


@torch.no_grad()
def score_examples(
    adapter_model: AdapterModel,
    examples: Sequence[Example],
    fmt: PromptFormat,
    *,
    batch_size: int,
    max_new_tokens: int,
    weights: Mixing | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    stop: Sequence[str] = (),
    speed: SpeedSettings | None = None,
) -> list[ExampleScore]:
    """Score ``examples`` with the adapters loaded in ``adapter_model``.

    Parameters
    ----------
    adapter_model : AdapterModel
        The model; its default slot alone unless ``weights`` says otherwise.
    examples : sequence of Example
        Rows to score (an example may appear twice, e.g. under two adapters).
    fmt : PromptFormat
        Prompt template and length limit.
    batch_size, max_new_tokens
        Rows per pass; greedy generation budget.
    weights : mapping, optional
        Slot -> weight: a float for every row, or a tensor with one weight per
        row of ``examples`` (each row its own adapter mix).
    choices : mapping, optional
        Task -> candidate answers: rows of these tasks are answered by the
        candidate with the highest likelihood instead of by generation.
    stop : sequence of str
        Generated answers end at the first of these strings.
    speed : SpeedSettings, optional
        Which exact speed-ups to use (default: all).
    """
    speed = speed or SpeedSettings()
    tokenizer = adapter_model.tokenizer
    encoded = [encode_example(tokenizer, ex, fmt) for ex in examples]
    prompts = [prompt_ids(tokenizer, fmt.prompt(ex)) for ex in examples]
    # The scored tokens (response and EOS) as encoded: an over-long row's prompt lost tokens from its left.
    answers = [e.input_ids[len(e.input_ids) - sum(label != IGNORE_INDEX for label in e.labels) :] for e in encoded]
    choices = choices or {}
    closed = [i for i, ex in enumerate(examples) if ex.task in choices]
    open_rows = [i for i, ex in enumerate(examples) if ex.task not in choices]
    shared, candidates = set(), _candidate_ids(tokenizer, fmt, choices)
    if speed.shared_prefill:
        shared = {i for i in open_rows if fits(prompts[i], answers[i], fmt, max_new_tokens)}
        # A closed row's loss is its reference's candidate score: no pass of its own when the reference is listed.
        shared |= {
            i
            for i in closed
            if examples[i].response in choices[examples[i].task]
            and all(fits(prompts[i], c, fmt, 0) for c in candidates[examples[i].task])
        }
    loss_sums, tokens = [0.0] * len(examples), [0] * len(examples)
    predictions = [""] * len(examples)
    rest = [i for i in range(len(examples)) if i not in shared]
    sums, counts = row_losses(
        adapter_model, [encoded[i] for i in rest], batch_size=batch_size, weights=_slice(weights, rest), speed=speed
    )
    for i, ls, nt in zip(rest, sums, counts, strict=True):
        loss_sums[i], tokens[i] = ls, nt
    # Generation runs until every row of a batch has ended: batching rows whose reference answers have
    # similar lengths lets batches of short answers stop early (the order never changes an answer). A batch
    # holds only rows of the shared pass or only the others: a shared row has no loss but from its own pass.
    for group in ([i for i in open_rows if i in shared], [i for i in open_rows if i not in shared]):
        keys = [(len(answers[i]), len(prompts[i])) for i in group]
        for batch in _batches(keys, batch_size, speed.eval_batching):
            rows = [group[j] for j in batch]
            with adapter_model.mixing(_slice(weights, rows)):
                if rows[0] in shared:
                    sums, counts, said = score_and_generate(
                        adapter_model,
                        [prompts[i] for i in rows],
                        [answers[i] for i in rows],
                        max_new_tokens=max_new_tokens,
                        stop=stop,
                    )
                    for i, ls, nt in zip(rows, sums, counts, strict=True):
                        loss_sums[i], tokens[i] = ls, nt
                else:
                    said = generate_ids(adapter_model, [prompts[i] for i in rows], fmt, max_new_tokens, stop)
            for i, answer in zip(rows, said, strict=True):
                predictions[i] = answer
    by_task: dict[str, list[int]] = defaultdict(list)
    for i in closed:
        if i in shared:
            by_task[examples[i].task].append(i)
    for task, group in by_task.items():
        listed, reference = choices[task], [choices[task].index(examples[i].response) for i in group]
        for batch in _batches([len(prompts[i]) for i in group], batch_size, speed.eval_batching):
            rows = [group[j] for j in batch]
            with adapter_model.mixing(_slice(weights, rows)):
                losses = score_choices(adapter_model, [prompts[i] for i in rows], candidates[task])
            for j, i, row in zip(batch, rows, losses, strict=True):
                predictions[i] = listed[min(range(len(listed)), key=row.__getitem__)]  # ties: the first listed
                loss_sums[i], tokens[i] = row[reference[j]], len(candidates[task][reference[j]])
    apart = [i for i in closed if i not in shared]
    if apart:
        chosen = choose_answers(
            adapter_model, [examples[i] for i in apart], fmt, choices, batch_size, _slice(weights, apart), speed
        )
        for i, answer in zip(apart, chosen, strict=True):
            predictions[i] = answer
    scores = []
    for ex, pred, ls, nt in zip(examples, predictions, loss_sums, tokens, strict=True):
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


def _candidate_ids(
    tokenizer: Any, fmt: PromptFormat, choices: Mapping[str, Sequence[str]]
) -> dict[str, list[list[int]]]:
    """Each task's candidate answers as scored tokens (a response's tokens do not depend on its prompt)."""
    return {
        task: [response_ids(tokenizer, Example(task=task, instruction="", response=a), fmt) for a in listed]
        for task, listed in choices.items()
    }


def choose_answers(
    adapter_model: AdapterModel,
    examples: Sequence[Example],
    fmt: PromptFormat,
    choices: Mapping[str, Sequence[str]],
    batch_size: int,
    weights: Mixing | None,
    speed: SpeedSettings,
) -> list[str]:
    """The candidate answer of highest teacher-forced likelihood for each example (ties: the first listed)."""
    rows, owner, texts = [], [], []
    for i, ex in enumerate(examples):
        for answer in choices[ex.task]:
            rows.append(encode_example(adapter_model.tokenizer, replace(ex, response=answer), fmt))
            owner.append(i)
            texts.append(answer)
    row_weights = _slice(weights, owner)
    sums, _ = row_losses(adapter_model, rows, batch_size=batch_size, weights=row_weights, speed=speed)
    best: dict[int, tuple[float, str]] = {}
    for i, loss, answer in zip(owner, sums, texts, strict=True):
        if i not in best or loss < best[i][0]:
            best[i] = (loss, answer)
    return [best[i][1] for i in range(len(examples))]


def mean_loss(
    adapter_model: AdapterModel,
    examples: Sequence[Example],
    fmt: PromptFormat,
    *,
    batch_size: int,
    weights: Mixing | None = None,
    speed: SpeedSettings | None = None,
) -> float:
    """Teacher-forced loss per supervised token over ``examples`` (no generation)."""
    encoded = [encode_example(adapter_model.tokenizer, ex, fmt) for ex in examples]
    sums, counts = row_losses(adapter_model, encoded, batch_size=batch_size, weights=weights, speed=speed)
    return sum(sums) / max(sum(counts), 1)


def text_losses(
    adapter_model: AdapterModel,
    texts: Sequence[str],
    *,
    batch_size: int,
    weights: Mixing | None = None,
    speed: SpeedSettings | None = None,
) -> tuple[list[float], list[int]]:
    """Summed language-model loss and predicted tokens of each plain text (``weights``: the mixing per row)."""
    encoded = []
    for text in texts:
        ids = prompt_ids(adapter_model.tokenizer, text)
        # Every token but the first is predicted from the ones before it.
        encoded.append(EncodedExample(input_ids=ids, labels=[IGNORE_INDEX, *ids[1:]]))
    return row_losses(adapter_model, encoded, batch_size=batch_size, weights=weights, speed=speed)


def text_loss(
    adapter_model: AdapterModel, texts: Sequence[str], *, batch_size: int, speed: SpeedSettings | None = None
) -> float:
    """Language-model loss per token of plain texts (e.g. prompts: their perplexity's log)."""
    sums, counts = text_losses(adapter_model, texts, batch_size=batch_size, speed=speed)
    return sum(sums) / max(sum(counts), 1)


def generate(
    adapter_model: AdapterModel,
    prompts: Sequence[str],
    fmt: PromptFormat,
    max_new_tokens: int,
    stop: Sequence[str] = (),
) -> list[str]:
    """Greedy answers to ``prompts`` (text after the prompt, up to EOS or a stop string)."""
    ids = [prompt_ids(adapter_model.tokenizer, p) for p in prompts]
    return generate_ids(adapter_model, ids, fmt, max_new_tokens, stop)


@torch.no_grad()
def generate_ids(
    adapter_model: AdapterModel,
    prompts: Sequence[list[int]],
    fmt: PromptFormat,
    max_new_tokens: int,
    stop: Sequence[str] = (),
) -> list[str]:
    """Greedy answers to tokenized prompts (kept to their last ``max_length - max_new_tokens`` tokens).

    A row's answer ends at the end-of-sequence token or at the first of the
    ``stop`` strings (left out of the answer); a batch ends when every row has.
    """
    tokenizer = adapter_model.tokenizer
    adapter_model.model.eval()
    ids = [p[-(fmt.max_length - max_new_tokens) :] for p in prompts]
    batch = {k: v.to(adapter_model.device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
    stopping = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
    out = adapter_model.model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **stopping,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    answers = [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]
    return [cut_at(answer, stop).strip() for answer in answers]


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
