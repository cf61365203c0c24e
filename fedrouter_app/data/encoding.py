"""From examples to token tensors: prompt templates and response-only loss masks.

The prompt and the response are tokenized separately and concatenated, so the
boundary is known exactly by token count: labels are ``-100`` on every prompt
token and on padding, whatever the tokenizer or chat format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from fedrouter_app.data.example import Example

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptFormat:
    """How an example becomes text.

    Attributes
    ----------
    prompt_template : str
        Contains ``{instruction}``.
    response_template : str
        Contains ``{response}``; the end-of-sequence token is appended.
    max_length : int
        Maximum tokens of prompt plus response.
    """

    prompt_template: str
    response_template: str
    max_length: int

    def prompt(self, example: Example) -> str:
        return self.prompt_template.format(instruction=example.instruction)

    def response(self, example: Example) -> str:
        return self.response_template.format(response=example.response)


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example and its loss labels."""

    input_ids: list[int]
    labels: list[int]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens (e.g. BOS)."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, fmt: PromptFormat) -> EncodedExample:
    """Tokenize one example; the loss covers the response and the EOS token only.

    Over-long examples lose prompt tokens from the left (the instruction's
    end, next to the answer, is kept), and at least one response token is
    always kept.
    """
    prompt = prompt_ids(tokenizer, fmt.prompt(example))
    response = list(tokenizer(fmt.response(example), add_special_tokens=False)["input_ids"])
    response.append(tokenizer.eos_token_id)
    response = response[: max(1, fmt.max_length - 1)]
    prompt = prompt[max(0, len(prompt) + len(response) - fmt.max_length) :]
    return EncodedExample(
        input_ids=prompt + response,
        labels=[IGNORE_INDEX] * len(prompt) + response,
    )


def collate(encoded: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for teacher-forced training or scoring."""
    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_prompts(prompts: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p) :] = torch.tensor(p)
        attention[row, width - len(p) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
