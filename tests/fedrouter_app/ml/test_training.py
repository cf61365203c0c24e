import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrouter_app.data.encoding import PromptFormat, collate, encode_example
from fedrouter_app.data.synthetic import make_examples
from fedrouter_app.ml.evaluation import row_losses
from fedrouter_app.ml.training import batch_indices, learning_rate, token_pass, train_adapter
from fedrouter_app.schema.learning import SpeedSettings

FMT = PromptFormat("{instruction} =", " {response}", 96)


def test_learning_rate_schedules():
    assert learning_rate("constant", 1e-3, 1e-5, 3, 10) == 1e-3
    assert learning_rate("cosine", 1e-3, 1e-5, 1, 10) == pytest.approx(1e-3)
    assert learning_rate("cosine", 1e-3, 1e-5, 10, 10) == pytest.approx(1e-5)
    mid = learning_rate("cosine", 1e-3, 1e-5, 5, 9)
    assert mid == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate("cosine", 1e-3, 0.0, 1, 1) == 1e-3


def test_batches_cover_an_epoch_without_replacement_and_are_seeded():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = list(batch_indices(10, 5, 4, g1)), list(batch_indices(10, 5, 4, g2))
    assert a == b
    assert sorted(a[0] + a[1]) == list(range(10)) and sorted(a[2] + a[3]) == list(range(10))
    assert len(next(batch_indices(3, 8, 2, torch.Generator().manual_seed(0)))) == 3


@pytest.mark.parametrize("scored_only", [True, False])
def test_prompt_tokens_do_not_count(adapter_model, scored_only):
    tok = adapter_model.tokenizer
    examples = make_examples(0, "copy", "train", range(4))
    encoded = [encode_example(tok, e, FMT) for e in examples]
    batch = collate(encoded, tok.pad_token_id)
    adapter_model.load_state(adapter_model.initial_state(0))
    forward = token_pass(adapter_model, SpeedSettings(scored_logits_only=scored_only))
    with torch.no_grad():
        loss_sum, tokens = forward(encoded).row_losses()
        logits = adapter_model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row, ex in enumerate(examples):
        enc = encode_example(tok, ex, FMT)
        n_prompt = enc.labels.count(-100)
        targets = torch.tensor(enc.input_ids[n_prompt:])
        predicted = logits[row, n_prompt - 1 : len(enc.input_ids) - 1]
        expected = F.cross_entropy(predicted, targets, reduction="sum")
        assert tokens[row].item() == len(targets)
        assert loss_sum[row].item() == pytest.approx(expected.item(), rel=1e-5)


def train(adapter_model, seed_parts, steps=15, task="reverse", regularizer=None, lr=3e-3):
    adapter_model.load_state(adapter_model.initial_state(0))
    stats = train_adapter(
        adapter_model,
        make_examples(0, task, "train", range(64)),
        FMT,
        steps=steps,
        batch_size=8,
        lr=lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed_parts=seed_parts,
        regularizer=regularizer,
    )
    return adapter_model.state(), stats


def test_training_is_reproducible_from_its_seed_parts(adapter_model):
    s1, st1 = train(adapter_model, (0, "train", 1, 1))
    s2, st2 = train(adapter_model, (0, "train", 1, 1))
    s3, _ = train(adapter_model, (0, "train", 2, 1))
    assert st1.mean_loss == st2.mean_loss and st1.steps == 15 and st1.examples == 120
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert any(not np.array_equal(s1[k], s3[k]) for k in s1)


def test_training_lowers_held_out_loss_and_leaves_the_base_alone(adapter_model):
    base_before = {n: p.detach().clone() for n, p in adapter_model.model.named_parameters() if "lora_" not in n}
    held_out = make_examples(0, "reverse", "test", range(16))
    encoded = [encode_example(adapter_model.tokenizer, e, FMT) for e in held_out]

    def loss() -> float:
        s, n = row_losses(adapter_model, encoded, batch_size=16)
        return sum(s) / sum(n)

    adapter_model.load_state(adapter_model.initial_state(0))
    before = loss()
    trained, stats = train(adapter_model, (0, "t"), steps=40)
    adapter_model.load_state(trained)
    assert loss() < before - 1.0
    assert math.isfinite(stats.mean_loss)
    for name, param in adapter_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base_before[name])


def test_regularizer_is_added_to_the_loss(adapter_model):
    free, _ = train(adapter_model, (0, "r"), lr=1e-2)
    params = list(adapter_model.params.values())
    pulled, _ = train(adapter_model, (0, "r"), lr=1e-2, regularizer=lambda: 100.0 * sum((p**2).sum() for p in params))
    norm = lambda s: sum(float((v**2).sum()) for v in s.values())  # noqa: E731
    assert norm(pulled) < norm(free)


def test_zero_steps_is_a_no_op(adapter_model):
    adapter_model.load_state(adapter_model.initial_state(0))
    stats = train_adapter(
        adapter_model, [], FMT, steps=5, batch_size=2, lr=1e-3, weight_decay=0, max_grad_norm=0, seed_parts=(0,)
    )
    assert stats.steps == 0
