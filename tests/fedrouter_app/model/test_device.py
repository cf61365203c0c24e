"""GPU code paths, exercised on the CPU: device choice, dtypes and autocast, 4-bit refusal, GPU shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedrouter_app.data.encoding import PromptFormat
from fedrouter_app.data.partition import build_client_data
from fedrouter_app.embedding import embed_texts
from fedrouter_app.evaluation import score_examples
from fedrouter_app.model import device as device_mod
from fedrouter_app.model.device import autocast_dtype, quantization_kwargs, resolve_device
from fedrouter_app.model.loading import load_adapter_model
from fedrouter_app.settings import ConfigError
from fedrouter_app.simulation import backend_config, default_gpus_per_client
from fedrouter_app.training import train_adapter


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this CPU-only process believe it has two CUDA devices (nothing is placed on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert autocast_dtype("auto", torch.device("cpu")) is None


def test_auto_chooses_cuda_and_bfloat16_autocast_when_cuda_is_there(fake_cuda, monkeypatch):
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert autocast_dtype("auto", device) == torch.bfloat16
    # A GPU without bfloat16 (before Ampere) gets float16 autocast, and training scales the loss.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", device) == torch.float16
    assert autocast_dtype("off", device) is None


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
    four_bit = dataclasses.replace(cfg.model, quantization="4bit", dtype="bfloat16")
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


@pytest.mark.parametrize(("dtype", "amp"), [("bfloat16", "bfloat16"), ("float16", "float16")])
def test_low_precision_base_trains_float32_adapters(cfg, dtype, amp):
    """bf16/fp16 base weights under CPU autocast (fp16 with loss scaling) train a step, adapters stay fp32."""
    model_settings = dataclasses.replace(cfg.model, dtype=dtype, autocast=amp, device="cpu")
    model = load_adapter_model(model_settings, cfg.lora)
    assert model.autocast_dtype == getattr(torch, amp)
    base = model.model.get_base_model()
    assert base.model.embed_tokens.weight.dtype == getattr(torch, dtype)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.params.values())
    before = {k: p.detach().clone() for k, p in model.params.items()}
    fmt = PromptFormat(cfg.data.prompt_template, cfg.data.response_template, cfg.model.max_length)
    stats = train_adapter(
        model,
        build_client_data(cfg, 0).train[:8],
        fmt,
        steps=1,
        batch_size=4,
        lr=1e-2,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed_parts=(0, "test-device"),
    )
    assert stats.steps == 1 and torch.isfinite(torch.tensor(stats.mean_loss))
    moved = [k for k, p in model.params.items() if not torch.equal(p, before[k])]
    assert moved and all(p.dtype == torch.float32 for p in model.params.values())
    # Scoring (teacher-forced loss and greedy generation) and embedding run under the same autocast.
    scores = score_examples(model, build_client_data(cfg, 0).test[:2], fmt, batch_size=2, max_new_tokens=2)
    assert len(scores) == 2 and all(s.loss_sum == s.loss_sum for s in scores)
    vectors = embed_texts(model, ["a b c", "d e"], batch_size=2, pooling="mean", max_length=16)
    assert vectors.shape == (2, model.hidden_size) and vectors.dtype == np.float32


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
