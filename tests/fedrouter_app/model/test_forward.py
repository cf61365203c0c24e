"""The exact speed-ups of teacher-forced passes: scored logits only, and the frozen-prefix cache.

Each is compared with the path it replaces on the embedded model (two blocks;
``lora.layers=[-1]`` adapts the upper one, so the lower one is the frozen
prefix): losses, gradients and whole training calls agree to float rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedrouter_app.data.encoding import PromptFormat, encode_example
from fedrouter_app.data.synthetic import make_examples
from fedrouter_app.ml.training import token_pass, train_adapter
from fedrouter_app.model.adapter_model import AdapterModel
from fedrouter_app.model.forward import PrefixCache, backbone_of
from fedrouter_app.model.loading import load_adapter_model
from fedrouter_app.schema.learning import SpeedSettings

FMT = PromptFormat("{instruction} =", " {response}", 96)
REFERENCE = SpeedSettings(eval_batching=False, scored_logits_only=False, prefix_cache=False)
ALL_ON = SpeedSettings()


@pytest.fixture(scope="module")
def upper_model(cfg) -> AdapterModel:
    """The embedded model with adapters on its last block only (not the process's cached model)."""
    model = load_adapter_model(cfg.model, dataclasses.replace(cfg.lora, layers=[-1]))
    trained = {k: v + 0.05 * np.sign(v + 0.5) for k, v in model.initial_state(1).items()}
    model.load_state(trained)  # B != 0, so the adapters change the outputs
    return model


def encoded_rows(model: AdapterModel, n: int = 8):
    examples = make_examples(0, "reverse", "train", range(n // 2)) + make_examples(0, "capital", "train", range(n // 2))
    return [encode_example(model.tokenizer, ex, FMT) for ex in examples]


def losses_and_grads(model: AdapterModel, speed: SpeedSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    params = list(model.params.values())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        sums, _ = token_pass(model, speed)(encoded_rows(model)).row_losses()
        sums.sum().backward()
        return sums.detach(), {k: p.grad.clone() for k, p in model.params.items()}
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def test_first_adapted_block_and_lora_keys(upper_model):
    assert upper_model.first_adapted_block == 1
    assert all(".layers.1." in key for key in upper_model.params)


@pytest.mark.parametrize(
    "speed",
    [
        SpeedSettings(eval_batching=False, scored_logits_only=True, prefix_cache=False),
        SpeedSettings(eval_batching=False, scored_logits_only=False, prefix_cache=True),
        ALL_ON,
    ],
    ids=["scored-only", "prefix-cache", "both"],
)
def test_losses_and_gradients_equal_the_full_pass(upper_model, speed):
    reference_losses, reference_grads = losses_and_grads(upper_model, REFERENCE)
    losses, grads = losses_and_grads(upper_model, speed)
    torch.testing.assert_close(losses, reference_losses, rtol=1e-5, atol=1e-5)
    assert grads.keys() == reference_grads.keys()
    for key, grad in grads.items():
        assert float(reference_grads[key].abs().max()) > 0, key
        torch.testing.assert_close(grad, reference_grads[key], rtol=1e-4, atol=1e-6)


def test_prefix_cache_is_filled_once_and_bounded(upper_model):
    cache = upper_model.prefix_cache(1 << 30)
    assert cache is not None and cache.first_block == 1
    rows = encoded_rows(upper_model, 6)
    before = (cache.hits, cache.misses, len(cache))
    token_pass(upper_model, ALL_ON)(rows)
    token_pass(upper_model, ALL_ON)(rows)
    new_entries = len(cache) - before[2]
    assert cache.misses - before[1] == new_entries <= len(rows)
    assert cache.hits - before[0] >= len(rows)

    small = PrefixCache(first_block=1, max_bytes=1)
    small.states(backbone_of(upper_model.model), [r.input_ids for r in rows])
    assert len(small) == 0 and small.nbytes == 0  # nothing fits: every state is recomputed when asked
    one = rows[0].input_ids
    width = upper_model.hidden_size * 4
    bounded = PrefixCache(first_block=1, max_bytes=width * (len(one) + 1))
    bounded.states(backbone_of(upper_model.model), [r.input_ids for r in rows])
    assert bounded.nbytes <= bounded.max_bytes and len(bounded) >= 1


def test_cached_states_are_those_entering_the_first_adapted_block(upper_model):
    ids = encoded_rows(upper_model, 2)[0].input_ids
    seen = []
    block = backbone_of(upper_model.model).layers[1]
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            backbone_of(upper_model.model)(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        handle.remove()
    (state,) = PrefixCache(first_block=1, max_bytes=1 << 20).states(backbone_of(upper_model.model), [ids])
    torch.testing.assert_close(state, seen[0][0], rtol=0, atol=1e-6)


def test_training_with_every_speed_up_matches_the_reference(upper_model):
    start = upper_model.state()
    examples = make_examples(0, "reverse", "train", range(16))

    def run(speed: SpeedSettings):
        upper_model.load_state(start)
        stats = train_adapter(
            upper_model,
            examples,
            FMT,
            steps=4,
            batch_size=4,
            lr=1e-2,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed_parts=(0, "forward-test"),
            speed=speed,
        )
        return upper_model.state(), stats

    reference, ref_stats = run(REFERENCE)
    fast, fast_stats = run(ALL_ON)
    upper_model.load_state(start)
    assert fast_stats.tokens == ref_stats.tokens > 0
    assert fast_stats.mean_loss == pytest.approx(ref_stats.mean_loss, rel=1e-5)
    for key in reference:
        np.testing.assert_allclose(fast[key], reference[key], rtol=1e-4, atol=1e-6)


def test_forward_tokens_count_every_position(upper_model):
    rows = encoded_rows(upper_model, 4)
    width = max(len(r.input_ids) for r in rows)
    before = upper_model.forward_tokens
    token_pass(upper_model, REFERENCE)(rows)
    assert upper_model.forward_tokens - before == len(rows) * width


def test_every_block_adapted_means_no_prefix_cache(adapter_model):
    assert adapter_model.first_adapted_block == 0
    assert adapter_model.prefix_cache(1 << 20) is None
