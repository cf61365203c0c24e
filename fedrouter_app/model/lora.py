"""LoRA adapter states: the only tensors that travel or get aggregated.

A :data:`LoraState` maps peft's saved parameter names (adapter name removed,
e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``) to
float32 NumPy arrays. That is exactly the key set of peft's
``adapter_model.safetensors``, so a state can be written in peft's own format
without the base model and read back with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig
from safetensors.numpy import save_file

from fedrouter_app.seeding import torch_generator

LoraState = dict[str, np.ndarray]
LoraTemplate = dict[str, tuple[int, ...]]


def is_lora_a(key: str) -> bool:
    return ".lora_A." in key


def is_lora_b(key: str) -> bool:
    return ".lora_B." in key


def initial_lora_state(template: LoraTemplate, seed: int) -> LoraState:
    """Fresh adapter weights as peft initialises them, but seeded by ``seed``.

    ``A`` is Kaiming-uniform (a = sqrt 5, peft's default) and ``B`` is zero, so
    the adapter starts as the identity update. Each tensor has its own seed
    derived from ``(seed, key)``: server and clients get identical weights
    without exchanging them, whatever order they build them in.
    """
    state: LoraState = {}
    for key, shape in template.items():
        if is_lora_a(key):
            tensor = torch.empty(shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=torch_generator(seed, "lora-init", key))
            state[key] = tensor.numpy()
        else:
            state[key] = np.zeros(shape, dtype=np.float32)
    return state


def template_of(state: Mapping[str, np.ndarray]) -> LoraTemplate:
    """Key-to-shape map of a state."""
    return {key: tuple(value.shape) for key, value in state.items()}


def num_parameters(template: LoraTemplate) -> int:
    """Number of scalars in an adapter of this template."""
    return sum(math.prod(shape) for shape in template.values())


def state_nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes of tensor data in a state."""
    return sum(value.nbytes for value in state.values())


def copy_state(state: Mapping[str, np.ndarray]) -> LoraState:
    return {key: value.copy() for key, value in state.items()}


def save_peft_adapter(state: Mapping[str, np.ndarray], lora_config: LoraConfig, out_dir: Path) -> None:
    """Write ``state`` in peft's format: ``adapter_config.json`` + safetensors.

    The directory loads with ``PeftModel.from_pretrained(base_model, out_dir)``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(str(out_dir))
    save_file(
        {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in state.items()},
        str(out_dir / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
