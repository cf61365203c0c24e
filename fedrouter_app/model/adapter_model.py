"""The per-process model: a frozen base LM with named LoRA slots, swapped in place.

Most methods use one slot, ``default``. Methods that combine adapters
(a global and a local one, a shared one and one per task) load them into
further slots and run the model under a *mixing*: which slots take part and
with what weight, a scalar or one weight per batch row. A LoRA layer's output
is ``W0 x + sum_s w_s * scale * B_s A_s x``, so mixing is linear in each
slot's ``delta W`` and a per-row weight gives every example its own mix in one
batched forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedTokenizerBase

from fedrouter_app.model.lora import LoraState, LoraTemplate, initial_lora_state

DEFAULT_SLOT = "default"

Weight = float | torch.Tensor
Mixing = Mapping[str, Weight]


def slot_parameters(peft_model: PeftModel, slot: str) -> dict[str, torch.nn.Parameter]:
    """peft's saved key (slot name removed) -> live parameter, for one slot."""
    marker = f".{slot}."
    return {
        name.replace(marker, "."): param
        for name, param in peft_model.named_parameters()
        if "lora_" in name and marker in name
    }


@dataclass
class AdapterModel:
    """A frozen base causal LM with LoRA slots whose weights are swapped in place.

    Attributes
    ----------
    model : PeftModel
        The wrapped model; its base weights never require gradients.
    tokenizer : PreTrainedTokenizerBase
        Its tokenizer (padding token set).
    device : torch.device
        Where the model lives.
    lora_config : LoraConfig
        The config every slot is created with (same keys and shapes).
    slots : dict
        Slot name -> (peft key -> live parameter).
    autocast_dtype : torch.dtype or None
        The dtype the forward passes autocast to (set up at load time), or None.
        Training scales the loss when it is float16.
    """

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    lora_config: LoraConfig
    slots: dict[str, dict[str, torch.nn.Parameter]] = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None
    _layers: list[LoraLayer] = field(default_factory=list, repr=False)

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        """Parameters of the default slot."""
        return self.slots[DEFAULT_SLOT]

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states (the dimension of embeddings)."""
        return int(self.model.get_base_model().config.get_text_config().hidden_size)

    @property
    def template(self) -> LoraTemplate:
        return {key: tuple(p.shape) for key, p in self.params.items()}

    def add_slot(self, name: str) -> None:
        """Create slot ``name`` (once); its weights are whatever is loaded into it next."""
        if name in self.slots:
            return
        if not name.isidentifier():
            raise ValueError(f"slot names must be identifiers, got {name!r}")
        self.model.add_adapter(name, self.lora_config)
        # New modules start in training mode (dropout on): align them with the model.
        self.model.train(self.model.training)
        params = slot_parameters(self.model, name)
        for param in params.values():
            param.data = param.data.float()
            param.requires_grad_(False)
        self.slots[name] = params
        # add_adapter may change which adapter is active: keep the default one.
        for layer in self._lora_layers():
            layer._active_adapter = [DEFAULT_SLOT]

    def state(self, slot: str = DEFAULT_SLOT) -> LoraState:
        """A slot's weights as float32 NumPy arrays (copies)."""
        return {key: p.detach().to("cpu", torch.float32).numpy().copy() for key, p in self.slots[slot].items()}

    def load_state(self, state: LoraState, slot: str = DEFAULT_SLOT) -> None:
        """Overwrite a slot's weights; keys and shapes must match exactly."""
        self.add_slot(slot)
        params = self.slots[slot]
        if state.keys() != params.keys():
            missing = sorted(params.keys() - state.keys())[:3]
            extra = sorted(state.keys() - params.keys())[:3]
            raise ValueError(f"adapter keys do not match the model: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for key, param in params.items():
                value = state[key]
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"adapter tensor {key} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                    )
                param.copy_(torch.from_numpy(np.asarray(value)))

    def initial_state(self, seed: int) -> LoraState:
        """The run's initial adapter (same as the server's, see :func:`initial_lora_state`)."""
        return initial_lora_state(self.template, seed)

    def save_adapter(self, state: LoraState, out_dir: Path) -> None:
        """Save ``state`` with peft's own ``save_pretrained`` (default slot only)."""
        self.load_state(state)
        self.model.save_pretrained(str(out_dir), selected_adapters=[DEFAULT_SLOT])

    @contextlib.contextmanager
    def mixing(self, weights: Mixing | None) -> Iterator[None]:
        """Run the model with several slots, each scaled by its weight.

        Parameters
        ----------
        weights : mapping or None
            Slot -> weight: a float, or a tensor with one weight per batch row.
            ``None`` means the default slot alone with weight 1 (no change).
            Contexts nest: leaving one restores what was active before.
        """
        if weights is None:
            yield
            return
        for slot in weights:
            if slot not in self.slots:
                raise KeyError(f"no adapter loaded in slot {slot!r}")
        base = self.lora_config.lora_alpha / self.lora_config.r
        scales = {slot: self._scale(base, w) for slot, w in weights.items()}
        saved = []
        for layer in self._lora_layers():
            saved.append((layer, layer._active_adapter, {s: layer.scaling[s] for s in scales}))
            # Set directly: peft's set_adapter would also change requires_grad.
            layer._active_adapter = list(scales)
            for slot, scale in scales.items():
                layer.scaling[slot] = scale
        try:
            yield
        finally:
            for layer, active, scaling in saved:
                layer._active_adapter = active
                layer.scaling.update(scaling)

    def _scale(self, base: float, weight: Weight) -> Weight:
        if isinstance(weight, torch.Tensor):
            # One weight per row, broadcast over (tokens, features).
            return (base * weight.to(self.device, torch.float32)).reshape(-1, 1, 1)
        return base * float(weight)

    def _lora_layers(self) -> list[LoraLayer]:
        if not self._layers:
            self._layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        return self._layers
