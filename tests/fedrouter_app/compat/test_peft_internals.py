"""What fedrouter relies on in peft's LoRA layers: still there, still doing what the mixing needs.

The model is a two-layer toy (no transformers model), so that these run in
well under a second and pin peft alone.
"""

import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fedrouter_app.compat import peft_internals, versions
from fedrouter_app.compat.peft_internals import (
    LoraLayer,
    active_adapters,
    adapter_scaling,
    lora_layers,
    set_active_adapters,
)

WIDTH, RANK, ALPHA = 6, 2, 4


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(WIDTH, WIDTH)
        self.outer = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(x)))


@pytest.fixture
def toy() -> torch.nn.Module:
    """The toy with LoRA adapters ``one`` and ``two`` on ``inner`` (non-zero, distinct weights)."""
    torch.manual_seed(0)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["inner"], lora_dropout=0.0)
    model = get_peft_model(Toy(), config, adapter_name="one")
    model.add_adapter("two", config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param))
    model.eval()
    return model


def inner_delta(model: torch.nn.Module, adapter: str, x: torch.Tensor) -> torch.Tensor:
    """``B A x`` of one adapter on ``inner``, without scaling."""
    (layer,) = lora_layers(model)
    return layer.lora_B[adapter](layer.lora_A[adapter](x))


def inner_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    (layer,) = lora_layers(model)
    return layer(x)


# The version fence.


def test_the_installed_peft_is_in_the_tested_range():
    assert peft_internals.check_peft_version() == versions.installed_version("peft")


@pytest.mark.parametrize("found", ["0.22.0", "0.16.0", "1.0.0"])
def test_a_peft_outside_the_tested_range_fails_with_one_line(monkeypatch, found):
    monkeypatch.setattr(versions, "installed_version", lambda distribution: found)
    with pytest.raises(RuntimeError) as error:
        peft_internals.check_peft_version()
    message = str(error.value)
    assert "\n" not in message
    assert f"was tested with peft >=0.17,<0.22; found {found}." in message


def test_importing_the_fence_under_another_peft_fails_before_importing_peft():
    script = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda d: '0.22.0' if d == 'peft' else real(d)\n"
        "import fedrouter_app.compat.peft_internals\n"
        "import sys\n"
        "sys.exit('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("RuntimeError: fedrouter sets peft's"), done.stderr


# The layers and what the mixing writes into them.


def test_lora_layers_are_found_and_keep_a_private_list_of_active_adapters(toy):
    layers = lora_layers(toy)
    assert len(layers) == 1 and isinstance(layers[0], LoraLayer)
    assert isinstance(active_adapters(layers[0]), str | list)
    assert set(adapter_scaling(layers[0])) == {"one", "two"}
    assert adapter_scaling(layers[0])["one"] == pytest.approx(ALPHA / RANK)


def test_setting_active_adapters_leaves_requires_grad_alone(toy):
    (layer,) = lora_layers(toy)
    before = {name: p.requires_grad for name, p in toy.named_parameters()}
    set_active_adapters(layer, ["two"])
    assert active_adapters(layer) == ["two"]
    assert list(layer.active_adapters) == ["two"]  # peft's public view reads the private one
    assert {name: p.requires_grad for name, p in toy.named_parameters()} == before


def test_the_forward_adds_every_active_adapter_times_its_scaling(toy):
    (layer,) = lora_layers(toy)
    x = torch.randn(3, WIDTH)
    base = layer.base_layer(x)
    set_active_adapters(layer, ["one", "two"])
    adapter_scaling(layer).update({"one": 0.5, "two": -2.0})
    with torch.no_grad():
        expected = base + 0.5 * inner_delta(toy, "one", x) + -2.0 * inner_delta(toy, "two", x)
        assert torch.allclose(inner_output(toy, x), expected, atol=1e-6)


def test_a_tensor_scaling_gives_every_batch_row_its_own_weight(toy):
    (layer,) = lora_layers(toy)
    x = torch.randn(3, 4, WIDTH)  # rows, tokens, features
    weights = torch.tensor([1.0, 0.0, -1.5])
    set_active_adapters(layer, ["one"])
    adapter_scaling(layer)["one"] = weights.reshape(-1, 1, 1)
    with torch.no_grad():
        expected = layer.base_layer(x) + weights.reshape(-1, 1, 1) * inner_delta(toy, "one", x)
        assert torch.allclose(inner_output(toy, x), expected, atol=1e-6)


def test_adding_an_adapter_keeps_the_active_one_visible_to_reset(toy):
    # AdapterModel.add_slot resets the active adapter after add_adapter; it needs to see and set it.
    (layer,) = lora_layers(toy)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["inner"])
    toy.add_adapter("three", config)
    set_active_adapters(layer, ["one"])
    assert active_adapters(layer) == ["one"] and "three" in adapter_scaling(layer)
