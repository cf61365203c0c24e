"""Where the base model runs and in which precision: device, autocast, 4-bit loading.

Adapters always hold float32 weights (they are what clients send, and Flower's
records carry no bfloat16). The frozen base weights may be float32, bfloat16
or float16 (``model.dtype``), or NF4 4-bit through bitsandbytes on CUDA
(``model.quantization=4bit``). On CUDA the forward passes run under bfloat16
autocast by default (``model.autocast=auto``), so the adapter matmuls use the
tensor cores while the adapter weights and their optimizer state stay float32.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

from fedrouter_app.settings import ConfigError, ModelSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` means the first visible CUDA device when there is one, else the CPU.

    Under Ray, a client actor given ``num_gpus`` sees only its GPU, as ``cuda:0``.

    Raises
    ------
    ConfigError
        When a CUDA device is asked for explicitly and this process has none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"model.device={name!r} but this process sees no CUDA device (torch {torch.__version__}); "
                "in a simulation give the clients GPUs (gpus_per_client / client-resources-num-gpus)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"model.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward passes, or ``None`` for none.

    ``auto``: bfloat16 on a CUDA device that supports it, float16 on an older
    one (training then scales the loss), nothing on the CPU (CPU autocast is
    slower than float32 on most processors). ``bfloat16``/``float16`` apply on
    any device, the CPU included.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DTYPES[setting]


def with_autocast(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Run ``module``'s forward under ``torch.autocast`` from now on.

    Wrapping the forward of the model (and of its backbone, which embedding
    calls directly) puts every training, scoring, generation and embedding
    pass under autocast without each caller having to open the context.
    """
    forward = module.forward

    @functools.wraps(forward)
    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device.type, dtype=dtype):
            return forward(*args, **kwargs)

    module.forward = autocast_forward


def quantization_kwargs(model: ModelSettings, device: torch.device) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for ``model.quantization`` (none: ``{}``).

    Raises
    ------
    ConfigError
        For 4-bit on a device other than CUDA, or without bitsandbytes installed.
    """
    if model.quantization == "none":
        return {}
    if device.type != "cuda":
        raise ConfigError(
            f"model.quantization={model.quantization} needs a CUDA device (bitsandbytes); this process runs on "
            f"{device}. Use model.quantization=none on the CPU."
        )
    if not has_bitsandbytes():
        raise ConfigError(f"model.quantization={model.quantization} needs bitsandbytes: pip install 'fedrouter[gpu]'")
    from transformers import BitsAndBytesConfig

    # Matmuls of the dequantized blocks run in bfloat16 unless the base is float16 (older GPUs).
    compute = torch.float16 if model.dtype == "float16" else torch.bfloat16
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )
    # Quantized weights are placed while loading and cannot be moved with .to() afterwards.
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def has_bitsandbytes() -> bool:
    """Whether the ``gpu`` extra's bitsandbytes is installed (looked up, not imported: it needs CUDA)."""
    return importlib.util.find_spec("bitsandbytes") is not None
