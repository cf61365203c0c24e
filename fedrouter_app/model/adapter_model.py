"""The per-process model: a frozen base LM with named LoRA slots, swapped in place.

Most methods use one slot, ``default``. Methods that combine adapters
(a global and a local one, a shared one and one per task) load them into
further slots and run the model under a *mixing*: which slots take part and
with what weight, a scalar or one weight per batch row. A LoRA layer's output
is ``W0 x + sum_s w_s * scale * B_s A_s x``, so mixing is linear in each
slot's ``delta W`` and a per-row weight gives every example its own mix in one
batched forward pass. The peft internals this relies on are behind
:mod:`fedrouter_app.compat.peft_internals`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel
from transformers import PreTrainedTokenizerBase

from fedrouter_app.compat.peft_internals import (
    LoraLayer,
    active_adapters,
    adapter_scaling,
    lora_layers,
    set_active_adapters,
)
from fedrouter_app.model.forward import PrefixCache, backbone_of, decoder_states, prefix_supported
from fedrouter_app.model.lora import LoraState, LoraTemplate, initial_lora_state

log = logging.getLogger(__name__)

# A sentence to check, once per model, that running the upper blocks from cached states matches the full pass.
PREFIX_PROBE = "The quick brown fox jumps over the lazy dog, then rests by the river."

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
    forward_tokens : int
        Token positions that have entered the decoder so far (padding included,
        every pass: training, scoring, generation steps, embeddings); callers
        take differences to measure a piece of work.
    """

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    lora_config: LoraConfig
    slots: dict[str, dict[str, torch.nn.Parameter]] = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None
    forward_tokens: int = 0
    _layers: list[LoraLayer] = field(default_factory=list, repr=False)
    _prefix: PrefixCache | None = field(default=None, repr=False)
    _prefix_verdict: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        backbone_of(self.model).register_forward_pre_hook(self._count_tokens, with_kwargs=True)

    def _count_tokens(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None and args:
            tokens = args[0]
        if tokens is not None:
            self.forward_tokens += int(tokens.shape[0] * tokens.shape[1])

    @property
    def first_adapted_block(self) -> int:
        """Index of the lowest transformer block with adapters (0 when every block has them)."""
        layers = self.lora_config.layers_to_transform
        if layers is None:
            return 0
        return min([layers] if isinstance(layers, int) else layers)

    def prefix_cache(self, max_bytes: int) -> PrefixCache | None:
        """The cache of frozen-prefix states, or None where it cannot give the full pass's results.

        Checked once per model: the architecture (:func:`prefix_supported`), then
        a probe sentence run both ways. ``max_bytes`` (re)sets the memory bound.
        """
        if self._prefix_verdict is None:
            self._prefix_verdict = self._check_prefix()
            if self._prefix_verdict:
                log.info("prefix cache off: %s", self._prefix_verdict)
        if self._prefix_verdict:
            return None
        if self._prefix is None:
            self._prefix = PrefixCache(self.first_adapted_block, max_bytes)
        self._prefix.max_bytes = max_bytes
        return self._prefix

    def _check_prefix(self) -> str:
        backbone = backbone_of(self.model)
        reason = prefix_supported(backbone, self.first_adapted_block)
        if reason:
            return reason
        ids = list(self.tokenizer(PREFIX_PROBE)["input_ids"])
        batch = {
            "input_ids": torch.tensor([ids], device=self.device),
            "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=self.device),
        }
        probe = PrefixCache(self.first_adapted_block, max_bytes=1 << 30)
        counted = self.forward_tokens
        with torch.no_grad():
            full = decoder_states(backbone, batch, [ids], None).float()
            cached = decoder_states(backbone, batch, [ids], probe).float()
        self.forward_tokens = counted
        scale = float(full.abs().max())
        if not torch.allclose(full, cached, rtol=1e-4, atol=1e-4 * max(scale, 1.0)):
            gap = float((full - cached).abs().max())
            return f"the upper blocks fed with cached states differ from the full pass (max |diff| {gap:.3g})"
        return ""

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
            set_active_adapters(layer, [DEFAULT_SLOT])

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
        if not self.model.training:
            weights = _without_idle_slots(weights)
        base = self.lora_config.lora_alpha / self.lora_config.r
        scales = {slot: self._scale(base, w) for slot, w in weights.items()}
        saved = []
        for layer in self._lora_layers():
            scaling = adapter_scaling(layer)
            saved.append((layer, active_adapters(layer), {s: scaling[s] for s in scales}))
            # Set directly: peft's set_adapter would also change requires_grad.
            set_active_adapters(layer, list(scales))
            scaling.update(scales)
        try:
            yield
        finally:
            for layer, active, scaling in saved:
                set_active_adapters(layer, active)
                adapter_scaling(layer).update(scaling)

    def _scale(self, base: float, weight: Weight) -> Weight:
        if isinstance(weight, torch.Tensor):
            # One weight per row, broadcast over (tokens, features).
            return (base * weight.to(self.device, torch.float32)).reshape(-1, 1, 1)
        return base * float(weight)

    def _lora_layers(self) -> list[LoraLayer]:
        if not self._layers:
            self._layers = lora_layers(self.model)
        return self._layers


def _without_idle_slots(weights: Mixing) -> Mixing:
    """``weights`` without the slots whose weight is 0 for every row of the batch (at least one slot kept).

    Rows routed one-hot over K slots, batched together, would otherwise run
    every slot's LoRA product in every layer for every row, K times the
    adapter work, and add exact zeros. Used outside training only: there a
    zero-weighted trainable slot still gets a (zero) gradient and its
    optimizer step, which leaving it out would change.
    """
    busy = {
        slot: w
        for slot, w in weights.items()
        if (bool(torch.count_nonzero(w)) if isinstance(w, torch.Tensor) else float(w) != 0.0)
    }
    return busy or dict(list(weights.items())[:1])
