"""What this processor can do in bfloat16, from torch's CPU feature probes (underscore functions of ``torch.cpu``).

``torch.cpu._is_avx512_bf16_supported`` and ``torch.cpu._is_amx_tile_supported``
are private; where a torch release drops them the answer is "not known", and
the caller treats the CPU as one without native bfloat16.
"""

from __future__ import annotations

import torch


def cpu_has_native_bfloat16() -> bool | None:
    """Whether the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); None when torch cannot tell."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if not any(callable(p) for p in probes):
        return None
    return any(bool(p()) for p in probes if callable(p))
