"""The embedded default model: a tiny Llama with its own tokenizer, made in-process.

Nothing is downloaded. A byte-level BPE tokenizer is trained on text from the
synthetic generator, a small ``LlamaForCausalLM`` is pre-trained briefly on
format-only tasks (so that the answer format is known but no evaluated task is)
and the result is saved once, in Hugging Face format, under the cache
directory. Every later load goes through the same ``from_pretrained`` code as a
hub model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedrouter_app.compat.transformers_internals import reinitialize_weights
from fedrouter_app.data.synthetic import PRETRAIN_TASKS, TASKS, make_example
from fedrouter_app.logs import get_logger
from fedrouter_app.seeding import derive_seed, python_rng

log = get_logger(__name__)

# Bump when the build recipe changes; changes of the generator change the key by themselves.
RECIPE_VERSION = 1

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """Shape and pre-training recipe of the embedded model (from ``conf/model``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    pretrain_steps: int
    pretrain_batch_size: int
    pretrain_lr: float
    seed: int

    def cache_key(self) -> str:
        """Directory name: changes with the spec, the recipe version and the generated text."""
        digest = hashlib.sha256(json.dumps({**asdict(self), "recipe": RECIPE_VERSION}, sort_keys=True).encode())
        for text in corpus(self.seed, 200):
            digest.update(text.encode())
        return "tiny-llama-" + digest.hexdigest()[:12]


def cache_root() -> Path:
    """Where built models live: ``$FEDROUTER_CACHE`` or ``~/.cache/fedrouter``."""
    if root := os.environ.get("FEDROUTER_CACHE"):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "fedrouter"


def ensure_embedded_model(spec: EmbeddedModelSpec) -> Path:
    """Return the directory of the built model, building it first if needed.

    Safe to call from many processes at once: one builds, the others wait on a
    file lock and then load the finished directory.
    """
    return build_once(cache_root() / "models" / spec.cache_key(), lambda out: build_embedded_model(spec, out))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, a model directory, after ``build(out_dir)`` made it if it was missing.

    Safe from many processes at once (Ray actors starting together): one builds
    into a temporary directory under a file lock and renames it into place, the
    others wait on the lock and then find the finished directory.
    """
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_suffix(".lock")):
        if (target / "config.json").exists():
            return target
        log.info("building model once into %s", target)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            build(Path(tmp) / "model")
            os.replace(Path(tmp) / "model", target)
    return target


def build_embedded_model(spec: EmbeddedModelSpec, out_dir: Path) -> None:
    """Train the tokenizer, pre-train the model and save both to ``out_dir``."""
    tokenizer = train_tokenizer(spec)
    model = LlamaForCausalLM(_llama_config(spec, tokenizer))
    _pretrain(model, tokenizer, spec)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def corpus(seed: int, size: int) -> Iterator[str]:
    """Text the tokenizer is trained on: instructions and answers of every task."""
    tables = {**TASKS, **PRETRAIN_TASKS}
    for i in range(size):
        name = list(tables)[i % len(tables)]
        ex = make_example(seed, name, "corpus", i, tasks=tables)
        yield f"{ex.instruction} = {ex.response}"


def train_tokenizer(spec: EmbeddedModelSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``spec.vocab_size`` entries, BOS prepended."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(spec.seed, 6000), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def _llama_config(spec: EmbeddedModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _pretraining_batch(
    spec: EmbeddedModelSpec, tokenizer: PreTrainedTokenizerFast, step: int
) -> dict[str, torch.Tensor]:
    """Format tasks with answers, plus evaluated tasks' inputs without answers."""
    rng = python_rng(spec.seed, "pretrain-batch", step)
    texts = []
    for i in range(spec.pretrain_batch_size):
        if rng.random() < 0.6:
            name = rng.choice(sorted(PRETRAIN_TASKS))
            ex = make_example(spec.seed, name, "pretrain", step * 1000 + i, tasks=PRETRAIN_TASKS)
            texts.append(f"{ex.instruction} = {ex.response}")
        else:
            name = rng.choice(sorted(TASKS))
            ex = make_example(spec.seed, name, "pretrain", step * 1000 + i)
            texts.append(ex.instruction)
    batch = tokenizer([t + EOS for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


def _pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: EmbeddedModelSpec) -> None:
    torch.manual_seed(derive_seed(spec.seed, "pretrain-init"))
    reinitialize_weights(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    model.train()
    for step in range(spec.pretrain_steps):
        lr = spec.pretrain_lr * 0.5 * (1 + math.cos(math.pi * step / spec.pretrain_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(**_pretraining_batch(spec, tokenizer, step)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == spec.pretrain_steps - 1:
            log.info("embedded model pre-training step %d/%d loss %.3f", step + 1, spec.pretrain_steps, loss.item())
    model.eval()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clear_cache() -> None:
    """Remove every built embedded model (they are rebuilt on demand)."""
    shutil.rmtree(cache_root() / "models", ignore_errors=True)
