"""Base model loading and the per-process model cache.

One frozen base model per worker process: it is loaded on first use, gets one
LoRA adapter slot attached once, and is reused by every virtual client and
round that process serves. Clients swap adapter weights in place
(:meth:`AdapterModel.load_state`); nothing else about the model changes between
messages.
"""

from __future__ import annotations

import threading
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers import logging as hf_logging

from fedrouter_app.logs import get_logger
from fedrouter_app.model.adapter_model import DEFAULT_SLOT, AdapterModel, slot_parameters
from fedrouter_app.model.device import quantization_kwargs, resolve_device, resolve_precision, with_autocast
from fedrouter_app.model.embedded import EmbeddedModelSpec, ensure_embedded_model
from fedrouter_app.model.gguf import ensure_gguf_model
from fedrouter_app.model.lora import LoraTemplate
from fedrouter_app.model.targets import resolve_target_modules
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.model import LoraSettings, ModelSettings

log = get_logger(__name__)

__all__ = [
    "AdapterModel",
    "cached_adapter_model",
    "hidden_size",
    "load_adapter_model",
    "lora_config",
    "lora_template",
    "model_path",
    "resolve_device",
]


def model_path(settings: ModelSettings) -> str:
    """Local directory or hub name to hand to ``from_pretrained``."""
    if settings.source == "embedded":
        assert settings.embedded is not None
        return str(ensure_embedded_model(EmbeddedModelSpec(**vars(settings.embedded))))
    if settings.source == "gguf":
        return str(ensure_gguf_model(settings.name))
    return settings.name


@lru_cache(maxsize=16)
def model_config(base_name: str) -> PretrainedConfig:
    """The model's config, from a local folder or the hub.

    Raises
    ------
    ConfigError
        One line naming ``model.name`` when there is no model there (no
        ``config.json`` in a folder, or a hub id that cannot be reached or
        does not exist), instead of transformers' multi-line error.
    """
    try:
        return AutoConfig.from_pretrained(base_name)
    except (OSError, ValueError) as err:
        where = "a local folder without a model config" if Path(base_name).exists() else "no local folder, and the hub"
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"model.name={base_name!r}: no model there ({where} did not give one: {reason})") from None


def _model_type(base_name: str) -> str:
    return str(model_config(base_name).model_type)


def _num_blocks(base_name: str) -> int:
    return int(model_config(base_name).get_text_config().num_hidden_layers)


def adapted_blocks(layers: list[int] | None, num_blocks: int) -> list[int] | None:
    """``lora.layers`` as sorted absolute block indices (negative ones count from the end); None: every block.

    Raises
    ------
    ConfigError
        For an index outside the model's blocks.
    """
    if layers is None:
        return None
    bad = [i for i in layers if not -num_blocks <= i < num_blocks]
    if bad:
        raise ConfigError(
            f"lora.layers {bad} outside the model's {num_blocks} blocks (0..{num_blocks - 1}, or negative)"
        )
    return sorted({i % num_blocks for i in layers})


def lora_config(lora: LoraSettings, base_name: str) -> LoraConfig:
    """The peft config of the run's adapters; ``base_name`` is what ``from_pretrained`` got.

    ``lora.target_modules`` of ``auto`` (or null) becomes the architecture's
    default names (:mod:`fedrouter_app.model.targets`), read from the config.
    """
    targets = lora.target_modules
    model_type = _model_type(base_name) if targets is None or targets == "auto" else ""
    blocks = adapted_blocks(lora.layers, _num_blocks(base_name)) if lora.layers is not None else None
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=resolve_target_modules(targets, model_type),
        layers_to_transform=blocks,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
    )


def hidden_size(model: ModelSettings) -> int:
    """Width of the model's hidden states (the dimension of its embeddings)."""
    return int(model_config(model_path(model)).get_text_config().hidden_size)


def lora_template(model: ModelSettings, lora: LoraSettings) -> LoraTemplate:
    """Adapter keys and shapes, from the model config alone (no weights loaded).

    The server uses this to create and check adapters without ever holding
    the base model.
    """
    config = model_config(model_path(model))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    peft_model = _attach_lora(skeleton, lora_config(lora, model_path(model)))
    return {key: tuple(p.shape) for key, p in slot_parameters(peft_model, DEFAULT_SLOT).items()}


def _attach_lora(model: torch.nn.Module, config: LoraConfig) -> PeftModel:
    """The model with one LoRA slot; target modules it lacks are one line listing the names it has."""
    targets = config.target_modules
    if isinstance(targets, list | set | tuple):
        modules = model.named_modules()
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in modules if isinstance(m, torch.nn.Linear)})
        missing = sorted(set(targets) - set(linear))
        if missing:
            raise ConfigError(
                f"lora.target_modules {missing} are not linear layers of this model; its linear layers are named "
                f"{', '.join(linear)} (or use 'auto' or 'all-linear')"
            )
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config, adapter_name=DEFAULT_SLOT)


def load_adapter_model(model: ModelSettings, lora: LoraSettings) -> AdapterModel:
    """Load the base model and tokenizer on the model's device, freeze it and attach one LoRA slot.

    Raises
    ------
    ConfigError
        For a device this process does not have, or 4-bit loading without CUDA
        or bitsandbytes (checked before anything is loaded).
    """
    device = resolve_device(model.device)
    quantization = quantization_kwargs(model, device)
    path = model_path(model)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Reusing EOS as padding keeps the vocabulary (and so the payload) unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    weights, amp = resolve_precision(model.precision, device)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=weights, **quantization)
    if not quantization:
        base.to(device)
    for param in base.parameters():
        param.requires_grad_(False)
    if amp is not None:
        with_autocast(base, device, amp)
        if base.base_model is not base:
            # Embedding calls the backbone directly, past the causal-LM forward.
            with_autocast(base.base_model, device, amp)
    config = lora_config(lora, path)
    peft_model = _attach_lora(base, config)
    peft_model.eval()
    params = slot_parameters(peft_model, DEFAULT_SLOT)
    for param in params.values():
        # Adapters train in float32 even on a low-precision base, and sit on its device.
        param.data = param.data.to(device, torch.float32)
    return AdapterModel(
        model=peft_model,
        tokenizer=tokenizer,
        device=device,
        lora_config=config,
        slots={DEFAULT_SLOT: params},
        autocast_dtype=amp,
    )


_cache_lock = threading.Lock()
_cache: dict[tuple, AdapterModel] = {}


def cached_adapter_model(model: ModelSettings, lora: LoraSettings) -> AdapterModel:
    """The process's model for these settings, loaded at most once.

    Only one model is kept: asking for different settings (a new run in the
    same worker) releases the previous one first.
    """
    key = (repr(model), repr(lora))
    with _cache_lock:
        if key not in _cache:
            _cache.clear()
            log.info("loading base model %s once for this process", model.name)
            _cache[key] = load_adapter_model(model, lora)
        return _cache[key]
