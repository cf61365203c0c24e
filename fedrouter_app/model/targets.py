"""Which modules LoRA adapts, by architecture, when ``lora.target_modules`` is ``auto``.

The default adapts every linear layer of the transformer blocks (attention
and MLP; on Llama the 7 projections q, k, v, o, gate, up, down), as many LoRA
fine-tuning recipes do: this project's choice, not the FedRouter paper's. The
authors' code gives peft no target modules, so peft's default for Llama
applies, ``q_proj`` and ``v_proj`` only; ``sweep=paper`` sets that list
explicitly. The output head and embeddings stay frozen. Names differ between
architectures, so they are listed per ``config.model_type``. An architecture
not listed falls back to peft's ``all-linear`` (every ``nn.Linear`` but the
output head), which reaches the same layers under whatever names they have.
"""

from __future__ import annotations

from typing import Any

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# GPT-NeoX, Falcon, BLOOM: fused QKV, attention output and the two MLP layers.
_FUSED_QKV = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
_GPT2_LIKE = ("c_attn", "c_proj", "c_fc")

TARGET_MODULES: dict[str, tuple[str, ...]] = {
    # Llama-3.x, SmolLM2 (a Llama), Mistral, Qwen2/2.5/3, Gemma 1-3, OLMo, Granite, StableLM.
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "stablelm",
        ),
        _LLAMA_LIKE,
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), _GPT2_LIKE),
    **dict.fromkeys(("gpt_neox", "falcon", "bloom"), _FUSED_QKV),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
}


def resolve_target_modules(setting: Any, model_type: str) -> list[str] | str:
    """``lora.target_modules`` as peft takes it, for a model of ``model_type``.

    Parameters
    ----------
    setting : list of str, str or None
        An explicit list is kept; ``"all-linear"`` is passed to peft; ``"auto"``
        and ``None`` take :data:`TARGET_MODULES` of the architecture.
    model_type : str
        ``config.model_type`` of the base model (e.g. ``"llama"``).

    Returns
    -------
    list of str or str
        Module names, or ``"all-linear"`` for an architecture not listed.
    """
    if isinstance(setting, str) and setting not in ("auto", "all-linear"):
        raise ValueError(f"lora.target_modules must be 'auto', 'all-linear' or a list of names; got {setting!r}")
    if setting == "all-linear":
        return "all-linear"
    if setting is None or setting == "auto":
        names = TARGET_MODULES.get(model_type)
        return list(names) if names else "all-linear"
    return [str(name) for name in setting]
