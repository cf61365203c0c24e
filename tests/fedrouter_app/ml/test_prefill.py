"""One prompt pass for a test row's loss and its greedy answer gives what the two separate passes give."""

import numpy as np
import pytest
import torch

from fedrouter_app.data.encoding import PromptFormat, encode_example, prompt_ids
from fedrouter_app.data.synthetic import make_examples
from fedrouter_app.ml.evaluation import score_examples
from fedrouter_app.ml.prefill import fits
from fedrouter_app.schema.learning import SpeedSettings

FMT = PromptFormat("{instruction} =", " {response}", 96)


def test_rows_whose_prompt_a_separate_pass_would_truncate_keep_the_separate_passes():
    assert fits([1, 2, 3], [4, 5], FMT, max_new_tokens=8)
    assert not fits([1], [4, 5], FMT, max_new_tokens=8)  # nothing to cache before the last prompt token
    assert not fits(list(range(90)), [4, 5, 6, 7, 8, 9, 10], FMT, max_new_tokens=4)  # the loss pass cuts the prompt
    assert not fits(list(range(90)), [4], FMT, max_new_tokens=8)  # generation cuts the prompt


@pytest.mark.parametrize("eos_after", [True, False])
def test_shared_prompt_pass_equals_separate_passes(adapter_model, eos_after):
    rng = np.random.default_rng(0)
    states = [
        {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in adapter_model.initial_state(s).items()}
        for s in (1, 2)
    ]
    for slot, state in zip(("route_0", "route_1"), states, strict=True):
        adapter_model.load_state(state, slot)
    examples = [
        *make_examples(0, "summarize", "test", range(4)),
        *make_examples(0, "copy", "test", range(4)),
        *make_examples(0, "capital", "test", range(3)),
    ]
    route = torch.tensor([float(i % 2) for i in range(len(examples))])
    weights = {"route_0": 1.0 - route, "route_1": route}
    stop = ["e"] if eos_after else []
    off = SpeedSettings(shared_prefill=False)
    separate = score_examples(
        adapter_model, examples, FMT, batch_size=5, max_new_tokens=10, weights=weights, stop=stop, speed=off
    )
    before = adapter_model.forward_tokens
    shared = score_examples(
        adapter_model, examples, FMT, batch_size=5, max_new_tokens=10, weights=weights, stop=stop, speed=SpeedSettings()
    )
    assert adapter_model.forward_tokens > before
    for a, b in zip(shared, separate, strict=True):
        assert a.prediction == b.prediction and a.tokens == b.tokens
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-4, abs=1e-4)
    assert len({s.prediction for s in shared}) > 2
    # Every row here fits, so none was scored by the separate passes.
    tok = adapter_model.tokenizer
    assert all(
        fits(
            prompt_ids(tok, FMT.prompt(e)),
            encode_example(tok, e, FMT).input_ids[len(prompt_ids(tok, FMT.prompt(e))) :],
            FMT,
            10,
        )
        for e in examples
    )


def test_rows_of_the_shared_pass_batched_with_rows_that_do_not_fit_keep_their_loss(adapter_model):
    # A row too long to fit sorts next to fitting rows: each must still get its loss, as without the shared pass.
    adapter_model.load_state(adapter_model.initial_state(0))
    long = make_examples(0, "copy", "test", range(1))[0]
    long = type(long)(long.task, " ".join([long.instruction] * 30), long.response)
    examples = [long, *make_examples(0, "copy", "test", range(3))]
    tok = adapter_model.tokenizer
    assert not fits(prompt_ids(tok, FMT.prompt(long)), [1], FMT, 10)
    kwargs = {"batch_size": 8, "max_new_tokens": 10}
    shared = score_examples(adapter_model, examples, FMT, **kwargs)
    separate = score_examples(adapter_model, examples, FMT, speed=SpeedSettings(shared_prefill=False), **kwargs)
    for a, b in zip(shared, separate, strict=True):
        assert a.tokens == b.tokens > 0 and a.prediction == b.prediction
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-4, abs=1e-4)


def test_a_row_one_token_too_long_is_scored_on_its_whole_answer(adapter_model):
    # Prompt + answer exceed the limit by one token: encoding drops the prompt's first token, so the
    # answer is what follows the truncated prompt, never the encoded row minus the untruncated prompt.
    adapter_model.load_state(adapter_model.initial_state(0))
    tok = adapter_model.tokenizer
    base = make_examples(0, "summarize", "test", range(1))[0]
    answer = len(encode_example(tok, base, FMT).labels) - len(prompt_ids(tok, FMT.prompt(base)))
    text = " ".join([base.instruction] * 100)
    over = None
    for n in range(1, 1000):
        candidate = type(base)(base.task, text[:n], base.response)
        if len(prompt_ids(tok, FMT.prompt(candidate))) + answer == FMT.max_length + 1:
            over = candidate
            break
    assert over is not None and answer >= 3
    kwargs = {"batch_size": 4, "max_new_tokens": 2}
    shared = score_examples(adapter_model, [over], FMT, **kwargs)[0]
    separate = score_examples(adapter_model, [over], FMT, speed=SpeedSettings(shared_prefill=False), **kwargs)[0]
    assert shared.tokens == separate.tokens == answer
    assert shared.loss_sum == pytest.approx(separate.loss_sum, rel=1e-4, abs=1e-4)


def test_closed_answers_from_one_prompt_pass_equal_a_pass_per_candidate(adapter_model):
    rng = np.random.default_rng(1)
    for slot, seed in (("route_0", 3), ("route_1", 4)):
        state = adapter_model.initial_state(seed)
        adapter_model.load_state(
            {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in state.items()}, slot
        )
    sentiment = make_examples(0, "sentiment", "test", range(5))
    count = make_examples(0, "count", "test", range(4))
    unlisted = type(count[0])("count", count[0].instruction, "7")  # its reference is no candidate: a pass of its own
    long = type(count[1])("count", " ".join([count[1].instruction] * 40), count[1].response)  # does not fit
    examples = [*sentiment, *count, unlisted, long, *make_examples(0, "copy", "test", range(2))]
    choices = {"sentiment": ("negative", "positive"), "count": ("1", "2", "3")}
    route = torch.tensor([float(i % 2) for i in range(len(examples))])
    weights = {"route_0": 1.0 - route, "route_1": route}
    kwargs = {"batch_size": 3, "max_new_tokens": 6, "weights": weights, "choices": choices}
    # Without the frozen-prefix cache, whose hits would hide the separate passes' repeated prompts from the count.
    spent = []
    for speed in (SpeedSettings(shared_prefill=False, prefix_cache=False), SpeedSettings(prefix_cache=False)):
        before = adapter_model.forward_tokens
        spent.append(score_examples(adapter_model, examples, FMT, speed=speed, **kwargs))
        spent.append(adapter_model.forward_tokens - before)
    separate, many, shared, fewer = spent
    for a, b in zip(shared, separate, strict=True):
        assert a.prediction == b.prediction and a.tokens == b.tokens > 0
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-4, abs=1e-4)
    assert {s.prediction for s in shared[:5]} <= set(choices["sentiment"])
    # The prompt runs once, not once per candidate and once more for the loss.
    assert fewer < 0.7 * many
