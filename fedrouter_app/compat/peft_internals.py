"""peft internals that the adapter slots rely on, behind small functions.

:class:`fedrouter_app.model.adapter_model.AdapterModel` runs a model under a
*mixing* of several LoRA adapters. It sets each LoRA layer's active adapters
through the layer's private ``_active_adapter`` (peft's ``set_adapter`` would
also switch ``requires_grad`` of every adapter's weights) and writes the
layer's ``scaling`` dict, sometimes with one weight per batch row (a tensor
of shape ``[rows, 1, 1]``). Both rely on how peft's LoRA forward works: it
adds ``lora_B(lora_A(x)) * scaling[name]`` for every active adapter.

Importing this module checks the installed peft against :data:`TESTED_PEFT`
first, before any of those names is looked up.
"""

from __future__ import annotations

import torch

from fedrouter_app.compat.versions import require_tested_version

TESTED_PEFT = ">=0.17,<0.22"
RELIES_ON = "sets peft's active LoRA adapters and their scaling directly"


def check_peft_version() -> str:
    """The installed peft version; raises ``RuntimeError`` outside :data:`TESTED_PEFT`."""
    return require_tested_version("peft", TESTED_PEFT, RELIES_ON, "peft>=0.17,<0.22")


# Checked before the import below: a moved internal would otherwise fail with a bare ImportError.
PEFT_VERSION = check_peft_version()

from peft.tuners.lora import LoraLayer  # noqa: E402

__all__ = [
    "PEFT_VERSION",
    "TESTED_PEFT",
    "ActiveAdapters",
    "LoraLayer",
    "Scaling",
    "active_adapters",
    "adapter_scaling",
    "check_peft_version",
    "lora_layers",
    "set_active_adapters",
]

# What a layer keeps as its active adapters: one name or a list of names.
ActiveAdapters = str | list[str]
# An adapter's scale: a float, or a tensor broadcast against the adapter's output.
Scaling = float | torch.Tensor


def lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
    """Every LoRA layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def active_adapters(layer: LoraLayer) -> ActiveAdapters:
    """The layer's active adapters, exactly as it keeps them (to be restored with :func:`set_active_adapters`)."""
    return layer._active_adapter


def set_active_adapters(layer: LoraLayer, names: ActiveAdapters) -> None:
    """Make ``names`` the layer's active adapters, leaving every weight's ``requires_grad`` as it is."""
    layer._active_adapter = names


def adapter_scaling(layer: LoraLayer) -> dict[str, Scaling]:
    """The layer's adapter name -> scale dict, live: the forward multiplies each adapter's output by its entry."""
    return layer.scaling
