import pytest

from fedrouter_app.data.encoding import PromptFormat
from fedrouter_app.data.example import Example
from fedrouter_app.data.synthetic import make_examples
from fedrouter_app.ml.evaluation import ExampleScore, generate, normalize, score_examples, summarize

FMT = PromptFormat("{instruction} =", " {response}", 96)


def test_normalize():
    assert normalize("  Paris \n") == "paris"
    assert normalize("new   delhi") == "new delhi"


def test_summary_pools_tokens_for_loss_and_examples_for_scores():
    scores = [
        ExampleScore("a", loss_sum=6.0, tokens=3, exact_match=1.0, rouge1=1.0, rougeL=1.0, prediction="x"),
        ExampleScore("a", loss_sum=2.0, tokens=1, exact_match=0.0, rouge1=0.5, rougeL=0.25, prediction="y"),
        ExampleScore("b", loss_sum=1.0, tokens=2, exact_match=0.0, rouge1=0.0, rougeL=0.0, prediction="z"),
    ]
    s = summarize(scores)
    assert s["a"].n == 2 and s["a"].loss == pytest.approx(2.0)
    assert s["a"].exact_match == 0.5 and s["a"].rouge1 == 0.75 and s["a"].rougeL == 0.625
    assert s["b"].loss == 0.5


def test_scores_of_answers_the_model_gives(adapter_model):
    adapter_model.load_state(adapter_model.initial_state(0))
    prompts = make_examples(0, "summarize", "test", range(4))
    said = generate(adapter_model, [FMT.prompt(e) for e in prompts], FMT, max_new_tokens=8)
    # Targets equal to what the model says score 1; unrelated targets score 0.
    right = [Example(e.task, e.instruction, s) for e, s in zip(prompts, said, strict=True) if s.strip()]
    wrong = [Example(e.task, e.instruction, "zzzz qqqq") for e in prompts]
    for ex, score in zip(right, score_examples(adapter_model, right, FMT, batch_size=4, max_new_tokens=8), strict=True):
        assert score.exact_match == 1.0 and score.rougeL == pytest.approx(1.0), (ex, score)
    for score in score_examples(adapter_model, wrong, FMT, batch_size=4, max_new_tokens=8):
        assert score.exact_match == 0.0 and score.rouge1 == 0.0


def test_batching_does_not_change_scores(adapter_model):
    adapter_model.load_state(adapter_model.initial_state(0))
    examples = make_examples(0, "data_to_text", "test", range(3)) + make_examples(0, "copy", "test", range(3))
    one = [s for e in examples for s in score_examples(adapter_model, [e], FMT, batch_size=1, max_new_tokens=12)]
    many = score_examples(adapter_model, examples, FMT, batch_size=6, max_new_tokens=12)
    for a, b in zip(one, many, strict=True):
        assert a.prediction == b.prediction
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-4, abs=1e-4)
        assert a.tokens == b.tokens


def test_mean_loss_matches_the_pooled_score_loss(adapter_model):
    from fedrouter_app.ml.evaluation import mean_loss

    adapter_model.load_state(adapter_model.initial_state(0))
    examples = make_examples(0, "copy", "test", range(5)) + make_examples(0, "capital", "test", range(3))
    scores = score_examples(adapter_model, examples, FMT, batch_size=3, max_new_tokens=4)
    pooled = sum(s.loss_sum for s in scores) / sum(s.tokens for s in scores)
    assert mean_loss(adapter_model, examples, FMT, batch_size=4) == pytest.approx(pooled, rel=1e-5)


def test_answers_end_at_a_stop_string(adapter_model):
    from fedrouter_app.ml.evaluation import cut_at

    assert cut_at("12\nAnswer: 13", ["\n"]) == "12" and cut_at("no stop", ["\n", "#"]) == "no stop"
    assert cut_at("a#b\nc", ["\n", "#"]) == "a"
    adapter_model.load_state(adapter_model.initial_state(0))
    prompts = [FMT.prompt(e) for e in make_examples(0, "summarize", "test", range(4))]
    free = generate(adapter_model, prompts, FMT, max_new_tokens=12)
    stop = next(ch for ch in "e a" if any(ch in answer[1:] for answer in free))
    stopped = generate(adapter_model, prompts, FMT, max_new_tokens=12, stop=[stop])
    assert stopped == [cut_at(answer, [stop]).strip() for answer in free]
    assert stopped != free
