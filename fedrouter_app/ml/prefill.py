"""One prompt pass for everything a test row continues it with: its reference answer, its greedy answer, or
every candidate answer of a closed-answer task.

Scoring a row takes its loss on the reference answer (the prompt followed by
the answer, teacher-forced) and a greedy answer (the prompt, then decoding), or,
for a closed-answer task, the loss of every candidate answer. All start by
running the model over the prompt, which is most of a short task's tokens.
Here the prompt runs once, left-padded so that every row's prompt ends at the
same position; its key/value cache is then continued by each of them in turn
(cut back to the prompt after each). The result equals separate passes up to
float rounding (tested).

The prompt pass stops one token short; the last prompt token is the first
input of every continuation, whose output predicts the answer's first token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from fedrouter_app.data.encoding import PromptFormat
from fedrouter_app.model.adapter_model import AdapterModel
from fedrouter_app.model.forward import backbone_of


def fits(prompt: Sequence[int], answer: Sequence[int], fmt: PromptFormat, max_new_tokens: int) -> bool:
    """Whether the separate passes would see this row's whole prompt (else they truncate it, and differ)."""
    return (
        len(prompt) >= 2
        and len(prompt) + len(answer) <= fmt.max_length
        and len(prompt) <= (fmt.max_length - max_new_tokens)
    )


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # As generation numbers them: real tokens from 0, padding at 0.
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def score_and_generate(
    adapter_model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
) -> tuple[list[float], list[int], list[str]]:
    """Summed loss of each reference answer, its token count, and each row's greedy answer.

    Parameters
    ----------
    adapter_model : AdapterModel
        The model, with the adapters (and mixing) of these rows active.
    prompts, answers : sequences of token ids
        Each row's prompt and reference answer (end-of-sequence token included); see :func:`fits`.
    max_new_tokens, stop
        Generation budget and stop strings, as in :func:`fedrouter_app.ml.evaluation.generate_ids`.
    """

    model, tokenizer, device = adapter_model.model, adapter_model.tokenizer, adapter_model.device
    model.eval()
    ids, mask, cache = _prompt_pass(adapter_model, prompts)
    sums, counts = _answer_losses(adapter_model, prompts, answers, mask, cache)

    # The answer: greedy decoding from the same prompt cache.
    width, pad = ids.shape[1], tokenizer.pad_token_id
    last = torch.tensor([[p[-1]] for p in prompts], device=device)
    stopping = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
    out = model.generate(
        input_ids=torch.cat([ids, last], dim=1),
        attention_mask=torch.cat([mask, torch.ones_like(last)], dim=1),
        cache=cache,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        **stopping,
    )
    predictions = [cut_at(tokenizer.decode(t, skip_special_tokens=True), stop).strip() for t in out[:, width + 1 :]]
    return sums, counts, predictions


@torch.no_grad()
def score_choices(
    adapter_model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
) -> list[list[float]]:
    """Summed loss of every candidate answer after each prompt, from one pass over the prompts.

    Parameters
    ----------
    adapter_model : AdapterModel
        The model, with the adapters (and mixing) of these rows active.
    prompts : sequence of token ids
        Each row's prompt (see :func:`fits`, with no generation budget).
    candidates : sequence of token ids
        The candidate answers (end-of-sequence token included), the same for every row.

    Returns
    -------
    list of list of float
        ``[row][candidate]`` summed loss, as a teacher-forced pass over the prompt followed by that
        candidate gives it (up to float rounding).
    """
    adapter_model.model.eval()
    _ids, mask, cache = _prompt_pass(adapter_model, prompts)
    per_candidate = [_answer_losses(adapter_model, prompts, [c] * len(prompts), mask, cache)[0] for c in candidates]
    return [list(row) for row in zip(*per_candidate, strict=True)]


def _prompt_pass(
    adapter_model: AdapterModel, prompts: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
    """Left-padded prompts but their last token, their mask, and the key/value cache of one pass over them."""
    device, pad = adapter_model.device, adapter_model.tokenizer.pad_token_id
    rows, width = len(prompts), max(len(p) for p in prompts) - 1
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        head = list(prompt[:-1])
        ids[row, width - len(head) :] = torch.tensor(head)
        mask[row, width - len(head) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache()
    backbone_of(adapter_model.model)(
        input_ids=ids, attention_mask=mask, position_ids=_positions(mask), cache=cache, use_cache=True
    )
    return ids, mask, cache


def _answer_losses(
    adapter_model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    mask: torch.Tensor,
    cache: DynamicCache,
) -> tuple[list[float], list[int]]:
    """Summed loss and token count of each answer, continuing ``cache``; the cache is left as it was."""
    device, pad = adapter_model.device, adapter_model.tokenizer.pad_token_id
    rows, width = len(prompts), mask.shape[1]
    # The last prompt token + the answer but its last token, predicting the answer.
    span = max(len(a) for a in answers)
    tail = torch.full((rows, span), pad, dtype=torch.long)
    tail_mask = torch.zeros((rows, span), dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        tail[row, : len(answer)] = torch.tensor([prompt[-1], *answer[:-1]])
        tail_mask[row, : len(answer)] = 1
    tail, tail_mask = tail.to(device), tail_mask.to(device)
    full_mask = torch.cat([mask, tail_mask], dim=1)
    hidden = backbone_of(adapter_model.model)(
        input_ids=tail,
        attention_mask=full_mask,
        position_ids=_positions(full_mask)[:, width:],
        cache=cache,
        use_cache=True,
    )[0]
    cache.crop(-span)  # back to the prompt alone, for the next continuation
    scored = tail_mask.bool()
    head_layer = adapter_model.model.get_base_model().get_output_embeddings()
    amp = adapter_model.autocast_dtype
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = head_layer(hidden[scored]).float()
    labels = torch.cat([torch.tensor(list(a), dtype=torch.long) for a in answers]).to(device)
    per_token = F.cross_entropy(logits, labels, reduction="none")
    row_of = scored.nonzero()[:, 0]
    sums = torch.zeros(rows, dtype=per_token.dtype, device=device).index_add(0, row_of, per_token)
    return sums.tolist(), [len(a) for a in answers]


def cut_at(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of the ``stop`` strings."""
    end = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:end]
