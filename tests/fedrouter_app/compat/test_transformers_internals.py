"""What fedrouter relies on in transformers' decoder stacks, on a tiny Llama built from a config."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedrouter_app.compat import transformers_internals, versions
from fedrouter_app.compat.transformers_internals import (
    block_input,
    decoder_blocks,
    reinitialize_weights,
    upper_blocks_only,
)

BLOCKS, FIRST = 3, 2


@pytest.fixture(scope="module")
def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=BLOCKS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def test_the_installed_transformers_is_in_the_tested_range():
    assert transformers_internals.check_transformers_version() == versions.installed_version("transformers")


@pytest.mark.parametrize("found", ["5.25.0", "4.57.1", "6.0.0"])
def test_a_transformers_outside_the_tested_range_fails_with_one_line(monkeypatch, found):
    monkeypatch.setattr(versions, "installed_version", lambda distribution: found)
    with pytest.raises(RuntimeError) as error:
        transformers_internals.check_transformers_version()
    assert "\n" not in str(error.value)
    assert f"was tested with transformers >=5,<5.25; found {found}." in str(error.value)


def test_the_decoder_stack_keeps_its_blocks_as_layers(tiny):
    blocks = decoder_blocks(tiny.model)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == BLOCKS
    assert decoder_blocks(torch.nn.Linear(2, 2)) is None


def test_running_the_upper_blocks_from_captured_states_gives_the_full_pass(tiny):
    backbone = tiny.model
    ids = torch.tensor([[3, 7, 1, 9, 4], [5, 5, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    captured: list[torch.Tensor] = []
    handle = decoder_blocks(backbone)[FIRST].register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(block_input(args, kwargs)), with_kwargs=True
    )
    with torch.no_grad():
        full = backbone(input_ids=ids, attention_mask=mask, use_cache=False)[0]
    handle.remove()
    assert captured[0].shape == (2, 5, 16)
    with torch.no_grad(), upper_blocks_only(backbone, FIRST):
        assert len(decoder_blocks(backbone)) == BLOCKS - FIRST
        upper = backbone(inputs_embeds=captured[0], attention_mask=mask, use_cache=False)[0]
    assert len(decoder_blocks(backbone)) == BLOCKS
    assert torch.allclose(full[0], upper[0], atol=1e-5)
    assert torch.allclose(full[1, :3], upper[1, :3], atol=1e-5)  # padding positions may differ


def test_reinitialising_draws_the_weights_afresh_from_torchs_generator(tiny):
    model = LlamaForCausalLM(tiny.config)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    torch.manual_seed(1)
    reinitialize_weights(model)
    first = [p.detach().clone() for p in model.parameters()]
    assert any(p.abs().sum() > 0 for p in first)
    torch.manual_seed(1)
    reinitialize_weights(model)
    assert all(torch.equal(a, b) for a, b in zip(first, model.parameters(), strict=True))
