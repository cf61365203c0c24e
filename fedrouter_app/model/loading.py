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

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from fedrouter_app.logs import get_logger
from fedrouter_app.model.adapter_model import DEFAULT_SLOT, AdapterModel, slot_parameters
from fedrouter_app.model.embedded import EmbeddedModelSpec, ensure_embedded_model
from fedrouter_app.model.lora import LoraTemplate
from fedrouter_app.settings import LoraSettings, ModelSettings

log = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_path(settings: ModelSettings) -> str:
    """Local directory or hub name to hand to ``from_pretrained``."""
    if settings.source == "embedded":
        assert settings.embedded is not None
        return str(ensure_embedded_model(EmbeddedModelSpec(**vars(settings.embedded))))
    return settings.name


def lora_config(lora: LoraSettings, base_name: str) -> LoraConfig:
    """The peft config of the run's adapters; ``base_name`` is what ``from_pretrained`` got."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
    )


def hidden_size(model: ModelSettings) -> int:
    """Width of the model's hidden states (the dimension of its embeddings)."""
    config = AutoConfig.from_pretrained(model_path(model))
    return int(config.get_text_config().hidden_size)


def lora_template(model: ModelSettings, lora: LoraSettings) -> LoraTemplate:
    """Adapter keys and shapes, from the model config alone (no weights loaded).

    The server uses this to create and check adapters without ever holding
    the base model.
    """
    config = AutoConfig.from_pretrained(model_path(model))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    peft_model = _attach_lora(skeleton, lora_config(lora, model_path(model)))
    return {key: tuple(p.shape) for key, p in slot_parameters(peft_model, DEFAULT_SLOT).items()}


def _attach_lora(model: torch.nn.Module, config: LoraConfig) -> PeftModel:
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config, adapter_name=DEFAULT_SLOT)


def load_adapter_model(model: ModelSettings, lora: LoraSettings) -> AdapterModel:
    """Load the base model and tokenizer, freeze it and attach one LoRA slot."""
    path = model_path(model)
    device = resolve_device(model.device)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Reusing EOS as padding keeps the vocabulary (and so the payload) unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[model.dtype])
    base.to(device)
    for param in base.parameters():
        param.requires_grad_(False)
    config = lora_config(lora, path)
    peft_model = _attach_lora(base, config)
    peft_model.eval()
    params = slot_parameters(peft_model, DEFAULT_SLOT)
    for param in params.values():
        # Adapters train in float32 even on a low-precision base.
        param.data = param.data.float()
    return AdapterModel(
        model=peft_model, tokenizer=tokenizer, device=device, lora_config=config, slots={DEFAULT_SLOT: params}
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
