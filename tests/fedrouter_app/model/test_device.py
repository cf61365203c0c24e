"""GPU code paths, exercised on the CPU: device choice, mixed precision, 4-bit refusal, GPU shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedrouter_app.data.encoding import PromptFormat, encode_example
from fedrouter_app.data.partition import build_client_data
from fedrouter_app.ml.embedding import embed_texts
from fedrouter_app.ml.evaluation import score_examples
from fedrouter_app.ml.training import token_pass, train_adapter
from fedrouter_app.model import device as device_mod
from fedrouter_app.model.device import quantization_kwargs, resolve_device, resolve_precision
from fedrouter_app.model.loading import load_adapter_model
from fedrouter_app.runners.simulation import backend_config, default_gpus_per_client
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.learning import SpeedSettings


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this CPU-only process believe it has two CUDA devices (nothing is placed on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_the_cpu_in_float32_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == (torch.float32, None)
    with pytest.raises(ConfigError, match="fp16-mixed needs a CUDA device"):
        resolve_precision("fp16-mixed", torch.device("cpu"))


def test_auto_chooses_cuda_and_bfloat16_mixed_precision_when_cuda_is_there(fake_cuda, monkeypatch):
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_precision("auto", device) == (torch.bfloat16, torch.bfloat16)
    # A GPU without bfloat16 (before Ampere) gets float16 mixed precision, and training scales the loss.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", device) == (torch.float16, torch.float16)
    assert resolve_precision("fp32", device) == (torch.float32, None)


def test_bfloat16_on_a_cpu_without_bfloat16_instructions_says_it_is_slow(monkeypatch, caplog):
    monkeypatch.setattr(device_mod, "cpu_has_native_bfloat16", lambda: False)
    device_mod._warn_emulated_bfloat16.cache_clear()
    with caplog.at_level("WARNING"):
        assert resolve_precision("bf16-mixed", torch.device("cpu")) == (torch.bfloat16, torch.bfloat16)
    assert "emulated" in caplog.text and "model.precision=fp32" in caplog.text
    monkeypatch.setattr(device_mod, "cpu_has_native_bfloat16", lambda: True)
    device_mod._warn_emulated_bfloat16.cache_clear()
    caplog.clear()
    resolve_precision("bf16-mixed", torch.device("cpu"))
    assert "emulated" not in caplog.text


def test_a_missing_cuda_device_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        resolve_device("cuda")


def test_four_bit_is_refused_on_the_cpu(cfg, make_cfg):
    with pytest.raises(ConfigError, match="4bit needs a CUDA device"):
        make_cfg("model.quantization=4bit", "model.device=cpu")
    # device=auto on a machine without CUDA: refused at load time, before anything is read.
    four_bit = dataclasses.replace(cfg.model, quantization="4bit", device="auto")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        load_adapter_model(four_bit, cfg.lora)


def test_four_bit_on_cuda_asks_bitsandbytes_for_nf4(cfg, fake_cuda, monkeypatch):
    four_bit = dataclasses.replace(cfg.model, quantization="4bit", precision="bf16-mixed")
    monkeypatch.setattr(device_mod, "has_bitsandbytes", lambda: False)
    with pytest.raises(ConfigError, match=r"fedrouter\[gpu\]"):
        quantization_kwargs(four_bit, torch.device("cuda:1"))
    monkeypatch.setattr(device_mod, "has_bitsandbytes", lambda: True)
    kwargs = quantization_kwargs(four_bit, torch.device("cuda:1"))
    assert kwargs["device_map"] == {"": 1}
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_kwargs(cfg.model, torch.device("cuda:0")) == {}
    fp32 = dataclasses.replace(four_bit, precision="fp32")
    compute = quantization_kwargs(fp32, torch.device("cuda:0"))["quantization_config"].bnb_4bit_compute_dtype
    assert compute == torch.float32


def test_bfloat16_mixed_precision_keeps_float32_master_weights_and_float32_gradients_close(cfg, make_cfg):
    """bf16-mixed: base in bfloat16 under autocast, float32 adapters, optimizer and gradients, close to fp32."""
    with pytest.raises(ConfigError, match="fp16-mixed needs a CUDA device"):
        make_cfg("model.precision=fp16-mixed", "model.device=cpu")
    data = build_client_data(cfg, 0)
    fmt = PromptFormat(cfg.data.prompt_template, cfg.data.response_template, cfg.model.max_length)
    reference = load_adapter_model(dataclasses.replace(cfg.model, precision="fp32", device="cpu"), cfg.lora)
    # A trained adapter (B != 0), so that every LoRA matrix has a gradient to compare.
    train_adapter(
        reference, data.train[:16], fmt, steps=4, batch_size=4, lr=1e-2, weight_decay=0.0, max_grad_norm=1.0,
        seed_parts=(0, "test-precision"),
    )  # fmt: skip
    state = reference.state()
    rows = [encode_example(reference.tokenizer, ex, fmt) for ex in data.train[16:24]]
    losses, grads = {}, {}
    for precision in ("fp32", "bf16-mixed"):
        model = load_adapter_model(dataclasses.replace(cfg.model, precision=precision, device="cpu"), cfg.lora)
        base = model.model.get_base_model()
        assert base.model.embed_tokens.weight.dtype == (torch.float32 if precision == "fp32" else torch.bfloat16)
        assert model.autocast_dtype == (None if precision == "fp32" else torch.bfloat16)
        model.load_state(state)
        for p in model.params.values():
            p.requires_grad_(True)
            p.grad = None
        loss_sum, tokens = token_pass(model, SpeedSettings())(rows).row_losses()
        loss = loss_sum.sum() / tokens.sum()
        assert loss.dtype == torch.float32  # the loss is taken in float32 from float32 logits
        loss.backward()
        # Master weights and their gradients (what the optimizer sees) stay float32 on the device.
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.params.values())
        losses[precision] = float(loss)
        grads[precision] = torch.cat([p.grad.flatten() for p in model.params.values()])
        # Scoring (teacher-forced loss and greedy generation) and embedding run under the same precision.
        scores = score_examples(model, data.test[:2], fmt, batch_size=2, max_new_tokens=2)
        assert len(scores) == 2 and all(s.loss_sum == s.loss_sum for s in scores)
        vectors = embed_texts(model, ["a b c", "d e"], batch_size=2, pooling="mean", max_length=16)
        assert vectors.shape == (2, model.hidden_size) and vectors.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: the loss within 2%, the gradient pointing the same way as in float32.
    assert abs(losses["bf16-mixed"] - losses["fp32"]) <= 0.02 * losses["fp32"]
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16-mixed"], dim=0)
    assert cosine > 0.98, float(cosine)


def test_fractional_gpus_per_client_reach_the_ray_backend(monkeypatch):
    config = backend_config(num_cpus=16, cpus_per_client=2, gpus_per_client=0.25)
    assert config["client_resources"] == {"num_cpus": 2, "num_gpus": 0.25}
    assert backend_config(num_cpus=2)["client_resources"]["num_gpus"] == 0.0
    assert backend_config(num_cpus=2, gpus_per_client=2)["client_resources"]["num_gpus"] == 2.0
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match="gpus_per_client"):
            backend_config(num_cpus=2, gpus_per_client=bad)
    monkeypatch.setenv("FEDROUTER_GPUS_PER_CLIENT", "0.5")
    assert default_gpus_per_client() == 0.5
    monkeypatch.delenv("FEDROUTER_GPUS_PER_CLIENT")
    assert default_gpus_per_client() == 0.0
