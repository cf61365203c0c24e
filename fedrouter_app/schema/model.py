"""Settings of the base model and its LoRA adapters (``model``, ``embedded``, ``lora``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fedrouter_app.schema.checks import one_of, require


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft ``LoraConfig``)."""

    r: int = field(metadata={"help": "LoRA rank."})
    alpha: int = field(metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    dropout: float = field(metadata={"help": "Dropout on the LoRA input during training."})
    # Any: OmegaConf's structured configs cannot type "a string or a list of strings".
    target_modules: Any = field(
        metadata={
            "help": "Module names to adapt (a list); 'auto' or null: every linear layer of the blocks, named per "
            "architecture (fedrouter_app/model/targets.py); 'all-linear': peft's own choice."
        }
    )

    # Any: a list of ints or null (OmegaConf cannot type an optional list of ints given as null in YAML).
    layers: Any = field(
        default=None,
        metadata={
            "help": "Transformer blocks that get adapters (peft's layers_to_transform): a list of block indices, "
            "negative ones counting from the last block as in Python (e.g. [-4,-3,-2,-1]: the last four); null: "
            "every block. With the lower blocks frozen, their output is computed once per sample and reused "
            "(speed.prefix_cache)."
        },
    )

    def validate(self) -> None:
        require(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        require(self.alpha > 0, f"lora.alpha must be > 0 (the update is scaled by alpha / r), got {self.alpha}")
        layers = self.layers
        require(
            layers is None
            or (
                isinstance(layers, list)
                and layers
                and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
                and len(set(layers)) == len(layers)
            ),
            f"lora.layers must be null or a non-empty list of distinct block indices; got {layers!r}",
        )
        require(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        targets = self.target_modules
        require(
            targets is None
            or targets in ("auto", "all-linear")
            or (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)),
            f"lora.target_modules must be 'auto', 'all-linear', null or a non-empty list of names; got {targets!r}",
        )


@dataclass
class EmbeddedModelSettings:
    """Shape and pre-training recipe of the embedded tiny Llama."""

    vocab_size: int = field(metadata={"help": "Byte-level BPE vocabulary size."})
    hidden_size: int = field(metadata={"help": "Hidden size."})
    intermediate_size: int = field(metadata={"help": "MLP size."})
    num_layers: int = field(metadata={"help": "Decoder layers."})
    num_heads: int = field(metadata={"help": "Attention heads."})
    pretrain_steps: int = field(metadata={"help": "Full-parameter pre-training steps, run once and cached."})
    pretrain_batch_size: int = field(metadata={"help": "Pre-training batch size."})
    pretrain_lr: float = field(metadata={"help": "Pre-training peak learning rate."})
    seed: int = field(metadata={"help": "Seed of the model build; fixed, independent of the run seed."})

    def validate(self) -> None:
        require(
            self.vocab_size >= 300,
            f"model.embedded.vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}",
        )
        require(self.hidden_size % self.num_heads == 0, "model.embedded.hidden_size must be a multiple of num_heads")


PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed")


@dataclass
class ModelSettings:
    """Which base model to load, and how."""

    source: str = field(
        metadata={
            "help": "'embedded' (built in-process), 'huggingface' (hub name or local path) or 'gguf' (a GGUF file, "
            "'<path>' or '<python package>:<file>', converted once to safetensors)."
        }
    )
    name: str = field(metadata={"help": "Hub name or local path of the model (a label for the embedded one)."})
    device: str = field(metadata={"help": "'auto' (CUDA when present), 'cpu' or 'cuda[:i]'."})
    max_length: int = field(metadata={"help": "Maximum tokens of prompt plus response."})
    embedded: EmbeddedModelSettings | None = field(metadata={"help": "Recipe of the embedded model; null otherwise."})
    quantization: str = field(
        default="none", metadata={"help": "'none' or '4bit' (NF4 through bitsandbytes; CUDA only, the gpu extra)."}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "'fp32' (everything in float32: exact, the reference), 'bf16-mixed' (frozen base weights in "
            "bfloat16, every pass under bfloat16 autocast; adapters, their gradients and the optimizer state stay "
            "float32, losses and softmax in float32), 'fp16-mixed' (the same in float16 with loss scaling; CUDA "
            "only) or 'auto' (bf16-mixed on a CUDA device with bfloat16, fp16-mixed on an older one, fp32 on the "
            "CPU). bf16-mixed pays on CPUs with bfloat16 matrix instructions (AMX, AVX512-BF16) and is far slower "
            "elsewhere."
        },
    )

    def validate(self) -> None:
        one_of("model.source", self.source, ("embedded", "huggingface", "gguf"))
        one_of("model.quantization", self.quantization, ("none", "4bit"))
        one_of("model.precision", self.precision, PRECISIONS)
        require(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            f"model.device must be auto, cpu, cuda or cuda:<index>; got {self.device!r}",
        )
        require(
            not (self.precision == "fp16-mixed" and self.device == "cpu"),
            "model.precision=fp16-mixed needs a CUDA device; on the CPU use fp32, or bf16-mixed where the CPU has "
            "bfloat16 matrix instructions",
        )
        require(
            not (self.quantization == "4bit" and self.device == "cpu"),
            "model.quantization=4bit needs a CUDA device (bitsandbytes); model.device is 'cpu'",
        )
        require(self.max_length >= 8, f"model.max_length must be >= 8, got {self.max_length}")
        if self.source == "embedded":
            require(self.embedded is not None, "model.source=embedded needs model.embedded settings")
            self.embedded.validate()
