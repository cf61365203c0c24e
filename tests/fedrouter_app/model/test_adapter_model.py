"""Slots and mixing: several adapters in one batched forward pass, each with its own weight."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from fedrouter_app.model.adapter_model import DEFAULT_SLOT
from fedrouter_app.model.loading import model_path

IDS = torch.tensor([[1, 7, 9, 12, 30], [1, 40, 41, 42, 43]])


def random_state(adapter_model, seed):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in adapter_model.template.items()}


def merged_logits(cfg, adapter_model, states_and_weights, ids):
    """Logits of a fresh base model whose adapted weights got ``sum w * scale * B @ A`` added."""
    plain = AutoModelForCausalLM.from_pretrained(model_path(cfg.model))
    scale = adapter_model.lora_config.lora_alpha / adapter_model.lora_config.r
    with torch.no_grad():
        for key in adapter_model.template:
            if key.endswith(".lora_A.weight"):
                module = plain.get_submodule(key[len("base_model.model.") : -len(".lora_A.weight")])
                b_key = key.replace(".lora_A.", ".lora_B.")
                for state, w in states_and_weights:
                    module.weight += w * scale * torch.from_numpy(state[b_key]) @ torch.from_numpy(state[key])
        return plain(input_ids=ids).logits


def test_mixing_equals_the_merged_delta_w(cfg, adapter_model):
    g, loc = random_state(adapter_model, 1), random_state(adapter_model, 2)
    adapter_model.load_state(g)
    adapter_model.load_state(loc, "local")
    with torch.no_grad(), adapter_model.mixing({DEFAULT_SLOT: 0.3, "local": 0.7}):
        mixed = adapter_model.model(input_ids=IDS).logits
    torch.testing.assert_close(
        mixed, merged_logits(cfg, adapter_model, [(g, 0.3), (loc, 0.7)], IDS), rtol=1e-4, atol=1e-4
    )


def test_per_row_weights_equal_one_row_at_a_time(cfg, adapter_model):
    g, loc = random_state(adapter_model, 3), random_state(adapter_model, 4)
    adapter_model.load_state(g)
    adapter_model.load_state(loc, "local")
    w = torch.tensor([0.2, 0.9])
    with torch.no_grad(), adapter_model.mixing({DEFAULT_SLOT: w, "local": 1 - w}):
        batched = adapter_model.model(input_ids=IDS).logits
    for row in range(2):
        with torch.no_grad(), adapter_model.mixing({DEFAULT_SLOT: float(w[row]), "local": float(1 - w[row])}):
            alone = adapter_model.model(input_ids=IDS[row : row + 1]).logits
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)
        expected = merged_logits(cfg, adapter_model, [(g, float(w[row])), (loc, float(1 - w[row]))], IDS[row : row + 1])
        torch.testing.assert_close(alone, expected, rtol=1e-4, atol=1e-4)


def test_slots_idle_for_a_whole_batch_are_left_out_of_evaluation_passes_exactly(adapter_model):
    from fedrouter_app.compat.peft_internals import active_adapters

    adapter_model.load_state(random_state(adapter_model, 7))
    adapter_model.load_state(random_state(adapter_model, 8), "local")
    layer = adapter_model._lora_layers()[0]
    both = {DEFAULT_SLOT: torch.tensor([1.0, 1.0]), "local": torch.tensor([0.0, 0.0])}
    adapter_model.model.eval()
    with torch.no_grad():
        with adapter_model.mixing(both):
            assert list(active_adapters(layer)) == [DEFAULT_SLOT]  # the idle slot's products are not run
            skipped = adapter_model.model(input_ids=IDS).logits
        with adapter_model.mixing({DEFAULT_SLOT: 1.0}):
            alone = adapter_model.model(input_ids=IDS).logits
        # Every slot idle (the base model alone): one is kept, weighted 0.
        with adapter_model.mixing({DEFAULT_SLOT: 0.0, "local": torch.zeros(2)}):
            assert list(active_adapters(layer)) == [DEFAULT_SLOT]
    assert torch.equal(skipped, alone)
    # In training every slot stays: a zero-weighted trainable slot still gets its (zero) gradient and step.
    adapter_model.model.train()
    try:
        with adapter_model.mixing(both):
            assert sorted(active_adapters(layer)) == sorted([DEFAULT_SLOT, "local"])
    finally:
        adapter_model.model.eval()


def test_mixing_is_undone_and_nests(adapter_model):
    adapter_model.load_state(random_state(adapter_model, 5))
    adapter_model.load_state(random_state(adapter_model, 6), "local")
    with torch.no_grad():
        before = adapter_model.model(input_ids=IDS).logits
        with adapter_model.mixing({"local": 1.0}):
            only_local = adapter_model.model(input_ids=IDS).logits
            with adapter_model.mixing({DEFAULT_SLOT: 1.0}):
                inner = adapter_model.model(input_ids=IDS).logits
            torch.testing.assert_close(adapter_model.model(input_ids=IDS).logits, only_local)
        after = adapter_model.model(input_ids=IDS).logits
    torch.testing.assert_close(before, after)
    torch.testing.assert_close(inner, before)
    assert not torch.allclose(only_local, before)


def test_slots_keep_their_own_weights(adapter_model):
    a, b = random_state(adapter_model, 7), random_state(adapter_model, 8)
    adapter_model.load_state(a)
    adapter_model.load_state(b, "other")
    assert all(np.array_equal(adapter_model.state()[k], a[k]) for k in a)
    assert all(np.array_equal(adapter_model.state("other")[k], b[k]) for k in b)
    with pytest.raises(KeyError, match="no adapter loaded in slot 'missing'"), adapter_model.mixing({"missing": 1.0}):
        pass


def test_training_one_slot_leaves_the_others(adapter_model):
    from fedrouter_app.data.encoding import PromptFormat
    from fedrouter_app.data.synthetic import make_examples
    from fedrouter_app.ml.training import train_adapter

    frozen = random_state(adapter_model, 9)
    adapter_model.load_state(adapter_model.initial_state(0))
    adapter_model.load_state(frozen, "frozen")
    stats = train_adapter(
        adapter_model,
        make_examples(0, "copy", "train", range(16)),
        PromptFormat("{instruction} =", " {response}", 64),
        steps=3,
        batch_size=4,
        lr=1e-2,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed_parts=(0,),
        mixing=lambda chunk: {DEFAULT_SLOT: 0.5, "frozen": 0.5},
    )
    assert stats.steps == 3 and set(stats.task_losses) == {"copy"}
    assert all(np.array_equal(adapter_model.state("frozen")[k], frozen[k]) for k in frozen)
    assert all(p.grad is None for slot in adapter_model.slots.values() for p in slot.values())
    trainable = {n for n, p in adapter_model.model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
