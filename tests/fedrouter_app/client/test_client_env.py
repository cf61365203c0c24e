"""Scoring rows under different adapters in one set of batches, and closed-answer tasks scored by choice."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedrouter_app.client.client_env import FORWARD_TOKENS, ClientEnv
from fedrouter_app.data.encoding import encode_example
from fedrouter_app.data.example import Example
from fedrouter_app.data.partition import build_client_data
from fedrouter_app.ml.evaluation import row_losses

GLOBAL = ("eval.scope=global", "scenario.test_examples_per_task=3")


def env_for(make_cfg, *overrides: str) -> ClientEnv:
    cfg = make_cfg(*GLOBAL, *overrides)
    return ClientEnv(cfg=cfg, data=build_client_data(cfg, 0), state=RecordDict())


def adapters(env: ClientEnv, n: int) -> dict[int, dict[str, np.ndarray]]:
    """``n`` different adapters whose B is not zero (so each changes the model's answers)."""
    out = {}
    for k in range(n):
        rng = np.random.default_rng(k)
        out[k] = {key: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for key, v in env.initial_adapter().items()}
    return out


def assert_same_scores(fast, reference):
    assert len(fast) == len(reference)
    for a, b in zip(fast, reference, strict=True):
        assert (a.task, a.prediction, a.tokens, a.exact_match, a.rougeL) == (
            b.task,
            b.prediction,
            b.tokens,
            b.exact_match,
            b.rougeL,
        )
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_routed_rows_in_one_batch_equal_one_pass_per_adapter(make_cfg):
    fast = env_for(make_cfg)
    reference = env_for(make_cfg, "speed.eval_batching=false")
    test = list(fast.data.test)
    # Every example under two adapters (as FedRouter's two routers may ask), plus one adapter used once.
    rows = test + test + test[:1]
    routes = [i % 3 for i in range(len(test))] + [(i + 1) % 3 for i in range(len(test))] + [3]
    states = adapters(fast, 4)
    got = fast.score_routed(rows, routes, states)
    want = reference.score_routed(rows, routes, states)
    assert_same_scores(got, want)
    # And the reference path is what scoring each adapter's rows alone gives.
    for k in range(4):
        mine = [i for i, r in enumerate(routes) if r == k]
        assert_same_scores([want[i] for i in mine], reference.score([rows[i] for i in mine], states[k]))
    assert len({s.prediction for s in got}) > 1


def test_closed_answer_tasks_pick_their_most_likely_label(make_cfg):
    env = env_for(make_cfg, "data.tasks=[copy,sentiment,paraphrase,count]", "eval.answer_mode=choices")
    assert env.choices() == {
        "count": ("1", "2", "3"),
        "sentiment": ("negative", "positive"),
        "paraphrase": ("no", "yes"),
    }
    state = adapters(env, 1)[0]
    scores = env.score(env.data.test, state)
    model = env.load({"default": state})
    for ex, score in zip(env.data.test, scores, strict=True):
        if ex.task == "copy":
            continue  # open task: generated
        labels = env.choices()[ex.task]
        encoded = [encode_example(model.tokenizer, Example(ex.task, ex.instruction, y), env.fmt) for y in labels]
        sums, _ = row_losses(model, encoded, batch_size=8)
        assert score.prediction == labels[int(np.argmin(sums))]
        assert score.exact_match == float(score.prediction == ex.response)
    generated = env_for(make_cfg, "data.tasks=[copy,sentiment,paraphrase,count]")
    assert generated.choices() == {}
    plain = generated.score(generated.data.test, state)
    # Loss is the teacher-forced loss of the reference answer either way; only closed tasks' answers differ.
    for a, b, ex in zip(scores, plain, env.data.test, strict=True):
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-5)
        if ex.task == "copy":
            assert a.prediction == b.prediction


def test_replies_carry_the_tokens_the_message_computed(make_cfg):
    env = env_for(make_cfg)
    assert env.stamp(RecordDict())["metrics"][FORWARD_TOKENS] == 0
    env.score(env.data.test[:2], env.initial_adapter())
    assert env.stamp(RecordDict())["metrics"][FORWARD_TOKENS] > 0
