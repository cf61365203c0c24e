"""Where the base model runs and in which precision: device, mixed precision, 4-bit loading.

``model.precision`` picks one of three recipes (:func:`resolve_precision`).
``fp32`` computes everything in float32. ``bf16-mixed`` and ``fp16-mixed`` keep
the frozen base weights in the low precision and run every forward pass under
``torch.autocast``: matrix products (the base's and the adapters') in the low
precision, reductions, softmax and losses in float32. Adapters always hold
float32 master weights with float32 gradients and optimizer state (they are
what clients send, and Flower's records carry no bfloat16); fp16 scales the
loss against underflowing gradients. NF4 4-bit base weights through
bitsandbytes (``model.quantization=4bit``, CUDA) compute in the same precision.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Any

import torch

from fedrouter_app.compat.torch_internals import cpu_has_native_bfloat16
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.model import ModelSettings

log = logging.getLogger(__name__)

# model.precision -> (dtype of the frozen base weights, autocast dtype or None).
RECIPES: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None),
    "bf16-mixed": (torch.bfloat16, torch.bfloat16),
    "fp16-mixed": (torch.float16, torch.float16),
}


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


def resolve_precision(setting: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """``(base weight dtype, autocast dtype or None)`` of ``model.precision`` on ``device``.

    ``auto`` is bf16-mixed on a CUDA device that supports bfloat16, fp16-mixed
    on an older one and fp32 on the CPU, where float32 is exact and, without
    bfloat16 matrix instructions, also the fastest.

    Raises
    ------
    ConfigError
        For fp16-mixed on a device other than CUDA.
    """
    if setting == "auto" and device.type != "cuda":
        setting = "fp32"
    elif setting == "auto":
        setting = "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    if setting == "fp16-mixed" and device.type != "cuda":
        raise ConfigError(f"model.precision=fp16-mixed needs a CUDA device; this process runs on {device}")
    if setting == "bf16-mixed" and device.type == "cpu" and not cpu_has_native_bfloat16():
        _warn_emulated_bfloat16()
    return RECIPES[setting]


@functools.cache
def _warn_emulated_bfloat16() -> None:
    log.warning(
        "model.precision=bf16-mixed on a CPU without bfloat16 matrix instructions (AMX, AVX512-BF16): its bfloat16 "
        "matrix products are emulated, typically many times slower than float32; model.precision=fp32 is faster here"
    )


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

    # Matmuls of the dequantized blocks run in the precision's compute dtype (float32 under fp32).
    weights, amp = resolve_precision(model.precision, device)
    compute = amp or weights
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )
    # Quantized weights are placed while loading and cannot be moved with .to() afterwards.
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def has_bitsandbytes() -> bool:
    """Whether the ``gpu`` extra's bitsandbytes is installed (looked up, not imported: it needs CUDA)."""
    return importlib.util.find_spec("bitsandbytes") is not None
