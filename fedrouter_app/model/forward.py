"""Teacher-forced forward passes: logits only where a token is scored, frozen lower blocks run once.

Training, scoring and distillation need next-token logits at the positions
whose next token carries a label (the response), never at prompt positions.
Two speed-ups live here, both switchable (``speed.*``) and both exact up to
float rounding:

- *scored logits only*: the decoder runs over the whole sequence, the output
  head only over the scored positions (the head of a small model is a large
  share of its work: 49,152 x 576 of SmolLM2-135M's 135 M parameters, applied
  at every position);
- *the prefix cache*: when LoRA adapts only the upper blocks (``lora.layers``),
  the hidden states entering the first adapted block depend on the tokens
  alone. They are computed once per token sequence, kept in a bounded
  least-recently-used cache on the model, and later passes run the adapted
  blocks only. Gradients are unchanged: nothing below the first adapted block
  has a trainable parameter.

With both off, :func:`scored_tokens` computes exactly what the model's own
forward computes, in the same order. The prefix cache's reliance on how
transformers' decoder stacks run is behind
:mod:`fedrouter_app.compat.transformers_internals`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedrouter_app.compat.transformers_internals import block_input, decoder_blocks, upper_blocks_only
from fedrouter_app.data.encoding import IGNORE_INDEX, EncodedExample, collate

log = logging.getLogger(__name__)

# Rows per pass when filling the prefix cache.
PREFIX_CHUNK = 64


@dataclass(frozen=True)
class ScoredTokens:
    """Next-token logits and labels of a batch, at the scored positions.

    Either *dense* (``logits`` is ``[rows, positions, vocab]`` and ``labels``
    ``[rows, positions]`` with ``-100`` where nothing is scored: the model's
    own output) or *packed* (``logits`` is ``[scored, vocab]``, ``labels`` and
    ``rows`` are ``[scored]``).
    """

    logits: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor | None
    num_rows: int

    @property
    def dense(self) -> bool:
        return self.rows is None

    def scored_logits(self) -> torch.Tensor:
        """``[scored, vocab]`` logits of the scored positions, in row-major order."""
        return self.logits[self.labels != IGNORE_INDEX] if self.dense else self.logits

    def row_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy and number of scored tokens, per row."""
        if self.dense:
            per_token = F.cross_entropy(
                self.logits.transpose(1, 2), self.labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            return per_token.sum(dim=1), (self.labels != IGNORE_INDEX).sum(dim=1)
        assert self.rows is not None
        per_token = F.cross_entropy(self.logits, self.labels, reduction="none")
        sums = torch.zeros(self.num_rows, dtype=per_token.dtype, device=per_token.device)
        sums = sums.index_add(0, self.rows, per_token)
        return sums, torch.bincount(self.rows, minlength=self.num_rows)


def backbone_of(peft_model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (embeddings, blocks, final norm) under a peft causal LM."""
    return peft_model.get_base_model().base_model


class PrefixCache:
    """Hidden states entering block ``first_block``, per token sequence, bounded by bytes (LRU).

    Keys are digests of the token ids, so one cache serves every client and
    round of a worker process; the model that owns the cache fixes the rest
    of the key (weights, layer).
    """

    def __init__(self, first_block: int, max_bytes: int) -> None:
        self.first_block = first_block
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._states: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def states(self, backbone: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """``[len, hidden]`` states of each sequence, computing the ones not cached in batches."""
        keys = [_digest(seq) for seq in sequences]
        found: dict[bytes, torch.Tensor] = {}
        missing: dict[bytes, Sequence[int]] = {}
        for key, seq in zip(keys, sequences, strict=True):
            if key in self._states:
                self._states.move_to_end(key)
                found[key] = self._states[key]
            elif key not in missing:
                missing[key] = seq
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        todo = list(missing.items())
        for start in range(0, len(todo), PREFIX_CHUNK):
            chunk = todo[start : start + PREFIX_CHUNK]
            for (key, _), state in zip(chunk, self._compute(backbone, [seq for _, seq in chunk]), strict=True):
                found[key] = state
                self._put(key, state)
        return [found[key] for key in keys]

    def _compute(self, backbone: torch.nn.Module, sequences: list[Sequence[int]]) -> list[torch.Tensor]:
        blocks = decoder_blocks(backbone)
        assert blocks is not None
        device = next(backbone.parameters()).device
        width = max(len(seq) for seq in sequences)
        ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(list(seq))
            mask[row, : len(seq)] = 1
        captured: list[torch.Tensor] = []

        def stop(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(block_input(args, kwargs))
            raise _PrefixReadyError

        handle = blocks[self.first_block].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            with torch.no_grad():
                backbone(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except _PrefixReadyError:
            pass
        finally:
            handle.remove()
        hidden = captured[0]
        return [hidden[row, : len(seq)].detach().clone() for row, seq in enumerate(sequences)]

    def _put(self, key: bytes, state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if size > self.max_bytes:
            return
        self._states[key] = state
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._states.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()


class _PrefixReadyError(Exception):
    """Stops a forward pass once the first adapted block's input is captured."""


def _digest(seq: Sequence[int]) -> bytes:
    return hashlib.blake2b(np.asarray(seq, dtype=np.int64).tobytes(), digest_size=16).digest()


def prefix_supported(backbone: torch.nn.Module, first_block: int) -> str:
    """Why the prefix cache cannot serve this model from ``first_block`` ('' when it can)."""
    blocks = decoder_blocks(backbone)
    if first_block <= 0:
        return "every block is adapted"
    if blocks is None:
        return f"{type(backbone).__name__} keeps no 'layers' list of blocks"
    config = backbone.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"its blocks mix attention kinds {sorted(kinds)}"
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return "its attention has dropout"
    dropouts = [m.p for b in list(blocks)[:first_block] for m in b.modules() if isinstance(m, torch.nn.Dropout)]
    if any(p > 0 for p in dropouts):
        return "its frozen blocks have dropout"
    return ""


def plain_head(peft_model: torch.nn.Module) -> bool:
    """Whether the model's logits are its output head applied to the last hidden states, nothing more."""
    config = peft_model.get_base_model().config.get_text_config()
    return not any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))


def decoder_states(
    backbone: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    sequences: Sequence[Sequence[int]],
    cache: PrefixCache | None,
) -> torch.Tensor:
    """Last hidden states ``[rows, positions, hidden]`` of a right-padded batch, from cached prefixes if given."""
    if cache is None:
        return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)[0]
    states = cache.states(backbone, sequences)
    rows, width = batch["input_ids"].shape
    embeds = states[0].new_zeros((rows, width, states[0].shape[-1]))
    for row, state in enumerate(states):
        embeds[row, : state.shape[0]] = state
    with upper_blocks_only(backbone, cache.first_block):
        return backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)[0]


def scored_tokens(
    peft_model: torch.nn.Module,
    encoded: Sequence[EncodedExample],
    pad_id: int,
    device: torch.device,
    *,
    scored_only: bool,
    cache: PrefixCache | None,
    autocast: torch.dtype | None,
) -> ScoredTokens:
    """Next-token logits (float32) of a batch of encoded examples, at least at every scored position.

    Parameters
    ----------
    peft_model : torch.nn.Module
        The model, with whatever adapters and mixing are active.
    encoded : sequence of EncodedExample
        The rows; labels ``-100`` mark positions that are not scored.
    pad_id : int
        Padding token id.
    device : torch.device
        The model's device.
    scored_only : bool
        Apply the output head only at scored positions (packed result).
    cache : PrefixCache, optional
        Start from cached states entering the first adapted block.
    autocast : torch.dtype, optional
        The dtype forward passes autocast to (the head is run under it too).
    """
    batch = {k: v.to(device) for k, v in collate(encoded, pad_id).items()}
    labels = batch["labels"][:, 1:]
    if not plain_head(peft_model):
        # Logits that the model post-processes (soft-capping, scaling) come from its own forward only.
        scored_only, cache = False, None
    if not scored_only and cache is None:
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return ScoredTokens(logits[:, :-1].float(), labels, None, len(encoded))
    backbone = backbone_of(peft_model)
    hidden = decoder_states(backbone, batch, [e.input_ids for e in encoded], cache)
    head = peft_model.get_base_model().get_output_embeddings()
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    if not scored_only:
        with amp:
            logits = head(hidden)
        return ScoredTokens(logits[:, :-1].float(), labels, None, len(encoded))
    mask = labels != IGNORE_INDEX
    with amp:
        logits = head(hidden[:, :-1][mask])
    return ScoredTokens(logits.float(), labels[mask], mask.nonzero()[:, 0], len(encoded))
