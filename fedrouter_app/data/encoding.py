"""From examples to token tensors: prompt formats and response-only loss masks.

The prompt and the response are tokenized separately and concatenated, so the
boundary is known exactly by token count: labels are ``-100`` on every prompt
token and on padding, whatever the tokenizer or chat format.

Two prompt formats: *plain* fills the data's text templates; *chat* puts the
instruction in a user turn of the tokenizer's own chat template (instruct
models are tuned on it) and the response after the assistant header.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.example import Example

if TYPE_CHECKING:
    from fedrouter_app.schema.data import DataSettings

IGNORE_INDEX = -100


# An upper bound on the characters of one token, so that cutting a field to max_length x this many characters before
# tokenizing keeps every token that can reach the model: a 20 MB field costs what a long one does.
MAX_TOKEN_CHARS = 64


@dataclass(frozen=True)
class PromptFormat:
    """How an example becomes text.

    Attributes
    ----------
    prompt_template : str
        Contains ``{instruction}`` (plain format).
    response_template : str
        Contains ``{response}`` (plain format); the end-of-sequence token is appended.
    max_length : int
        Maximum tokens of prompt plus response.
    chat : callable, optional
        Instruction -> prompt text in the tokenizer's chat template, ending
        with the assistant header (chat format; see :func:`chat_renderer`).
        The templates are then not used: the response follows the header as it is.
    """

    prompt_template: str
    response_template: str
    max_length: int
    chat: Callable[[str], str] | None = None

    @classmethod
    def from_settings(cls, data: DataSettings, max_length: int, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
        """The format ``data.prompt_format`` names, for this tokenizer."""
        chat = chat_renderer(tokenizer, data.system_prompt) if data.prompt_format == "chat" else None
        return cls(data.prompt_template, data.response_template, max_length, chat)

    @property
    def max_chars(self) -> int:
        """Characters of a field that can reach the model: no token is longer than :data:`MAX_TOKEN_CHARS`."""
        return self.max_length * MAX_TOKEN_CHARS

    def prompt(self, example: Example) -> str:
        # Only the instruction's end can reach the model (prompts lose tokens from the left): a huge field is cut
        # before it is tokenized, not after.
        instruction = example.instruction[-self.max_chars :]
        if self.chat is not None:
            return self.chat(instruction)
        return self.prompt_template.format(instruction=instruction)

    def response(self, example: Example) -> str:
        response = example.response[: self.max_chars]  # responses lose tokens from the right
        if self.chat is not None:
            return response
        return self.response_template.format(response=response)


def chat_renderer(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> Callable[[str], str]:
    """Instruction -> the chat-template text of a user turn and the assistant header.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Its ``chat_template`` renders the turns.
    system_prompt : str, optional
        A system turn before the user's; None keeps whatever the template puts
        there by itself (some add a default system prompt).

    Raises
    ------
    DataError
        When the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"data.prompt_format=chat needs a tokenizer with a chat template; {name!r} has none "
            "(use data.prompt_format=plain, or an instruct model)"
        )
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]

    def render(instruction: str) -> str:
        turns = [*head, {"role": "user", "content": instruction}]
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))

    return render


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example and its loss labels."""

    input_ids: list[int]
    labels: list[int]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens (e.g. BOS).

    A text that already starts with the BOS token (a chat template that writes
    it) gets no second one.
    """
    bos = getattr(tokenizer, "bos_token", None)
    special = not (isinstance(bos, str) and bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def response_ids(tokenizer: PreTrainedTokenizerBase, example: Example, fmt: PromptFormat) -> list[int]:
    """The scored tokens of an example: its response and the EOS token (at most ``max_length - 1``)."""
    response = list(tokenizer(fmt.response(example), add_special_tokens=False)["input_ids"])
    response.append(tokenizer.eos_token_id)
    return response[: max(1, fmt.max_length - 1)]


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, fmt: PromptFormat) -> EncodedExample:
    """Tokenize one example; the loss covers the response and the EOS token only.

    Over-long examples lose prompt tokens from the left (the instruction's
    end, next to the answer, is kept), and at least one response token is
    always kept.
    """
    prompt = prompt_ids(tokenizer, fmt.prompt(example))
    response = response_ids(tokenizer, example, fmt)
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
