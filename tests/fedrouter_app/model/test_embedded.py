import os

import pytest
import torch

from fedrouter_app.model.embedded import EmbeddedModelSpec, cache_root, ensure_embedded_model, train_tokenizer
from fedrouter_app.model.loading import cached_adapter_model

SPEC = EmbeddedModelSpec(
    vocab_size=320,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    pretrain_steps=3,
    pretrain_batch_size=4,
    pretrain_lr=1e-3,
    seed=0,
)


def test_tokenizer_round_trips_and_prepends_bos():
    tok = train_tokenizer(SPEC)
    ids = tok("reverse planet =")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "reverse planet ="
    assert len(tok) == SPEC.vocab_size


def test_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("FEDROUTER_CACHE", str(tmp_path / "one"))
    first = ensure_embedded_model(SPEC)
    assert first.is_relative_to(cache_root())
    mtime = os.path.getmtime(first / "config.json")
    assert ensure_embedded_model(SPEC) == first and os.path.getmtime(first / "config.json") == mtime
    monkeypatch.setenv("FEDROUTER_CACHE", str(tmp_path / "two"))
    second = ensure_embedded_model(SPEC)
    w1 = AutoModelForCausalLM.from_pretrained(first).state_dict()
    w2 = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_one_model_per_process(cfg, adapter_model):
    assert cached_adapter_model(cfg.model, cfg.lora) is adapter_model


def test_base_is_frozen_and_only_lora_trains(adapter_model):
    trainable = {n for n, p in adapter_model.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == len(adapter_model.params)


@pytest.mark.parametrize("module", ["q_proj", "v_proj", "down_proj"])
def test_default_targets_cover_llama_linears(adapter_model, module):
    assert any(f".{module}.lora_A." in k for k in adapter_model.params)
