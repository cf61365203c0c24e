"""Sentence embeddings from the frozen base model, for clustering and routing.

By default the adapters are switched off, so an embedding depends on the text
and the base model only, never on training; a caller may ask for given adapter
slots instead (FedDPA's representations use the local adapter). Texts are embedded as they are (no prompt
template), with the tokenizer's own special tokens, left-padded; padding is
masked out of the pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedrouter_app.data.encoding import collate_prompts, prompt_ids
from fedrouter_app.model.adapter_model import AdapterModel, Mixing


@torch.no_grad()
def embed_texts(
    adapter_model: AdapterModel,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    pooling: str = "mean",
    max_length: int = 1024,
    mixing: Mixing | None = None,
    by_length: bool = True,
) -> np.ndarray:
    """Pooled last hidden state (after the final norm) of each text, float32.

    Parameters
    ----------
    adapter_model : AdapterModel
        The process's model.
    texts : sequence of str
        Texts to embed.
    batch_size : int
        Texts per forward pass.
    pooling : {"mean", "last"}
        Mean over non-padding tokens, or the last token's state.
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
    """
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    model, tokenizer = adapter_model.model, adapter_model.tokenizer
    # The backbone alone: its last hidden state is what we pool, and skipping
    # the LM head saves the vocabulary-sized projection.
    backbone = model.get_base_model().base_model
    tokens = [prompt_ids(tokenizer, text)[:max_length] for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i])) if by_length else list(range(len(texts)))
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = [tokens[i] for i in order[start : start + batch_size]]
        batch = {k: v.to(adapter_model.device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
        adapters = adapter_model.mixing(mixing) if mixing is not None else model.disable_adapter()
        with adapters:
            hidden = backbone(**batch).last_hidden_state.float()
        if pooling == "last":
            pooled = hidden[:, -1]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        chunks.append(pooled.cpu().numpy())
    if not chunks:
        return np.zeros((0, backbone.config.hidden_size), dtype=np.float32)
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out
