"""Sentence embeddings from the frozen base model, for clustering and routing.

By default the adapters are switched off, so an embedding depends on the text
and the base model only, never on training; a caller may ask for given adapter
slots instead (FedDPA's representations use the local adapter). Texts are embedded as they are (no prompt
template), with the tokenizer's own special tokens, left-padded; padding is
masked out of the pooling.

What a text's embedding is, is the caller's choice: which hidden state
(``layer``: by default the model's last hidden state, after the final norm)
and how its tokens are pooled (:data:`POOLINGS`: the mean over every token,
the last token's state, or the mean over the instruction's leading task text
only, whose end :class:`InstructionPrefixes` finds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedrouter_app.data.encoding import collate_prompts, prompt_ids
from fedrouter_app.model.adapter_model import AdapterModel, Mixing

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedrouter_app.schema.data import DataSettings

# "mean": every non-padding token; "last": the last non-padding token; "prefix": the first tokens of each
# text only (as many as its task text covers, see prefix_token_counts).
POOLINGS = ("mean", "last", "prefix")


@torch.no_grad()
def embed_texts(
    adapter_model: AdapterModel,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    pooling: str = "mean",
    layer: int | None = None,
    prefix_chars: Sequence[int] | None = None,
    max_length: int = 1024,
    mixing: Mixing | None = None,
    by_length: bool = True,
) -> np.ndarray:
    """Pooled hidden state of each text, float32.

    Parameters
    ----------
    adapter_model : AdapterModel
        The process's model.
    texts : sequence of str
        Texts to embed.
    batch_size : int
        Texts per forward pass.
    pooling : {"mean", "last", "prefix"}
        Mean over non-padding tokens, the last token's state, or the mean over
        the tokens of each text's first ``prefix_chars`` characters (see
        :func:`prefix_token_counts`; at least the first token).
    layer : int, optional
        Which hidden state: ``None`` (default) the model's last hidden state,
        after the final norm; an integer indexes the model's hidden states as
        ``output_hidden_states`` returns them, ``0`` the token embeddings and
        ``i`` the output of block ``i``, negative counting from the end (for
        Llama-family models the last entry is the normed one, so ``-1`` equals
        the default).
    prefix_chars : sequence of int, optional
        With ``pooling="prefix"`` (and only then): per text, how many leading
        characters to pool over.
    max_length : int
        Texts are truncated to their first ``max_length`` tokens.
    mixing : mapping, optional
        Adapter slots active during the pass; by default none (the frozen base).
    by_length : bool
        Batch texts of similar token length together (less padding; each
        text's embedding does not depend on its batch).

    Returns
    -------
    numpy.ndarray
        ``(len(texts), hidden_size)``.

    Raises
    ------
    ValueError
        On an unknown pooling, a layer the model does not have, or
        ``prefix_chars`` missing (or given without ``pooling="prefix"``).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
    if (pooling == "prefix") != (prefix_chars is not None):
        raise ValueError("prefix_chars is needed with pooling='prefix' and only then")
    if prefix_chars is not None and len(prefix_chars) != len(texts):
        raise ValueError(f"prefix_chars has {len(prefix_chars)} entries for {len(texts)} texts")
    model, tokenizer = adapter_model.model, adapter_model.tokenizer
    # The backbone alone: its hidden states are what we pool, and skipping
    # the LM head saves the vocabulary-sized projection.
    backbone = model.get_base_model().base_model
    if layer is not None:
        check_layer(layer, backbone.config.num_hidden_layers)
    tokens = [prompt_ids(tokenizer, text)[:max_length] for text in texts]
    keep = None
    if prefix_chars is not None:
        counts = prefix_token_counts(tokenizer, texts, prefix_chars)
        keep = [min(n, len(ids)) for n, ids in zip(counts, tokens, strict=True)]
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i])) if by_length else list(range(len(texts)))
    chunks = []
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        batch = {
            k: v.to(adapter_model.device)
            for k, v in collate_prompts([tokens[i] for i in rows], tokenizer.pad_token_id).items()
        }
        adapters = adapter_model.mixing(mixing) if mixing is not None else model.disable_adapter()
        with adapters:
            if layer is None:
                hidden = backbone(**batch).last_hidden_state.float()
            else:
                hidden = backbone(**batch, output_hidden_states=True).hidden_states[layer].float()
        counts_of_rows = None if keep is None else torch.tensor([keep[i] for i in rows], device=hidden.device)
        chunks.append(pool_hidden(hidden, batch["attention_mask"], pooling, counts_of_rows).cpu().numpy())
    if not chunks:
        return np.zeros((0, backbone.config.hidden_size), dtype=np.float32)
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


def check_layer(layer: int, num_blocks: int) -> None:
    """Raise ``ValueError`` unless ``layer`` indexes one of the ``num_blocks + 1`` hidden states."""
    states = num_blocks + 1
    if not -states <= layer < states:
        raise ValueError(
            f"embedding layer {layer} does not exist: the model has {states} hidden states "
            f"(0: token embeddings, 1..{num_blocks}: its blocks; negative counts from the end)"
        )


def pool_hidden(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool ``(batch, tokens, dim)`` hidden states into ``(batch, dim)``.

    Padding may be on either side: positions are counted over the
    non-padding tokens of each row (``attention_mask`` 1).

    Parameters
    ----------
    hidden : torch.Tensor
        ``(batch, tokens, dim)`` states.
    attention_mask : torch.Tensor
        ``(batch, tokens)``, 1 on real tokens.
    pooling : {"mean", "last", "prefix"}
        See :func:`embed_texts`.
    keep : torch.Tensor, optional
        ``(batch,)`` leading real tokens to average per row (``pooling="prefix"``).
    """
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask
    if pooling == "prefix":
        if keep is None:
            raise ValueError("pooling='prefix' needs the number of tokens to keep per row")
        rank = attention_mask.long().cumsum(dim=1) - 1
        mask = attention_mask * (rank < keep.to(rank.device).unsqueeze(1))
    elif pooling != "mean":
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def prefix_token_counts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], chars: Sequence[int]) -> list[int]:
    """For each text, how many of its tokens (special tokens included) cover its first ``chars`` characters.

    A token belongs to the prefix when it starts inside it, so leading special
    tokens (e.g. BOS) count and a token straddling the boundary counts too.
    A fast tokenizer's character offsets decide; a slow one's count is that of
    the prefix tokenized alone. Always at least one token.
    """
    if getattr(tokenizer, "is_fast", False):
        counts = []
        for text, n in zip(texts, chars, strict=True):
            offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
            counts.append(sum(1 for start, _ in offsets if start < n))
    else:
        counts = [len(prompt_ids(tokenizer, text[:n])) for text, n in zip(texts, chars, strict=True)]
    return [max(1, c) for c in counts]


@dataclass(frozen=True)
class InstructionPrefixes:
    """Where the leading task text of an instruction ends, i.e. the part before the sample's input.

    Examples carry one instruction string, so the boundary is found from how
    the data builds instructions (:meth:`from_data`): the longest of the
    ``known`` fixed texts the instruction starts with (a synthetic task's
    keyword, a table's ``prefix``); failing that, the text before the first
    of the ``separators`` (a named hub mapping's task prompt is its first
    line; a table with a ``context_field`` puts a blank line between the
    instruction column and the context). An instruction with no separable
    prefix (e.g. ``data.prefix_free``, ``data.task_prompts=false``, tables
    without a prefix, node-local data) is its own prefix: the whole
    instruction is used.

    Attributes
    ----------
    known : tuple of str
        Fixed texts some task puts before its input.
    separators : tuple of str
        Texts that end the task text when no known prefix matches.
    """

    known: tuple[str, ...] = ()
    separators: tuple[str, ...] = ()

    @classmethod
    def from_data(cls, data: DataSettings) -> InstructionPrefixes:
        """The prefixes ``data``'s source puts before its inputs."""
        from fedrouter_app.data.mappings import NAMED
        from fedrouter_app.data.synthetic import TASKS

        if data.source == "synthetic":
            known = () if data.prefix_free else tuple(f"{task.keyword} " for task in TASKS.values())
            return cls(known=known)
        separators = []
        if data.task_prompts and any(t.mapping in NAMED for t in data.tables):
            separators.append("\n")
        if any(t.mapping == "columns" and t.context_field for t in data.tables):
            separators.append("\n\n")
        return cls(known=tuple(t.prefix for t in data.tables if t.prefix.strip()), separators=tuple(separators))

    def end(self, text: str) -> int:
        """Characters of ``text``'s task text, trailing whitespace excluded; ``len(text)`` when there is none."""
        matches = [p for p in self.known if text.startswith(p)]
        if matches:
            cut = max(matches, key=len)
        else:
            found = [text.find(s) for s in self.separators if s in text]
            cut = text[: min(found)] if found else ""
        n = len(cut.rstrip())
        return n if n > 0 else len(text)
