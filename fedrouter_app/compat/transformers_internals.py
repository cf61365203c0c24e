"""transformers internals that the prefix cache and the embedded model rely on, behind small functions.

- The prefix cache (:mod:`fedrouter_app.model.forward`) runs a decoder stack
  from a middle block: it reads the stack's ``layers`` list of blocks, catches
  the hidden states entering a block with a forward pre-hook (the block's first
  argument, or its ``hidden_states`` keyword), and swaps ``layers`` for the
  upper blocks while it feeds their input as ``inputs_embeds``: that needs the
  stack's forward to loop over whatever ``layers`` holds. (Each model is also
  checked once at run time against a full pass, and the cache is turned off
  where the two differ.)
- The embedded model (:mod:`fedrouter_app.model.embedded`) re-initialises its
  weights with the model's private ``_init_weights``: the public
  ``init_weights`` skips modules already initialised.

Importing this module checks the installed transformers against
:data:`TESTED_TRANSFORMERS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from fedrouter_app.compat.versions import require_tested_version

TESTED_TRANSFORMERS = ">=5,<5.25"
RELIES_ON = "runs transformers' decoder stacks from a middle block and re-runs their weight initialisation"


def check_transformers_version() -> str:
    """The installed transformers version; raises ``RuntimeError`` outside :data:`TESTED_TRANSFORMERS`."""
    return require_tested_version("transformers", TESTED_TRANSFORMERS, RELIES_ON, "transformers>=5,<5.25")


TRANSFORMERS_VERSION = check_transformers_version()

__all__ = [
    "TESTED_TRANSFORMERS",
    "TRANSFORMERS_VERSION",
    "block_input",
    "check_transformers_version",
    "decoder_blocks",
    "reinitialize_weights",
    "upper_blocks_only",
]


def decoder_blocks(backbone: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The transformer blocks of a decoder stack, where it keeps them as ``layers`` (Llama and kin)."""
    layers = getattr(backbone, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states a block is called with, from a forward pre-hook's ``args`` and ``kwargs``."""
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def upper_blocks_only(backbone: torch.nn.Module, first_block: int) -> Iterator[None]:
    """Run ``backbone`` with its blocks below ``first_block`` left out (to be fed by ``inputs_embeds``)."""
    blocks = decoder_blocks(backbone)
    assert blocks is not None
    backbone.layers = torch.nn.ModuleList(list(blocks)[first_block:])
    try:
        yield
    finally:
        backbone.layers = blocks


def reinitialize_weights(model: torch.nn.Module) -> None:
    """Draw every weight of a transformers model afresh, as its own initialisation does (from torch's RNG)."""
    model.apply(model._init_weights)
