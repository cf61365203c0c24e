import pytest

from fedrouter_app.data.synthetic import COUNTRIES, PRETRAIN_TASKS, TASKS, WORDS, make_example, make_examples


def test_examples_are_a_pure_function_of_seed_task_split_index():
    for task in TASKS:
        a = make_examples(7, task, "train", range(20))
        b = make_examples(7, task, "train", range(20))
        assert a == b
        assert make_examples(8, task, "train", range(20)) != a
        assert make_examples(7, task, "test", range(20)) != a


def test_order_of_generation_does_not_matter():
    forward = [make_example(0, "add", "train", i) for i in range(10)]
    backward = [make_example(0, "add", "train", i) for i in reversed(range(10))]
    assert forward == list(reversed(backward))


def test_at_least_eight_tasks_with_both_metric_kinds():
    assert len(TASKS) >= 8
    assert {t.metric for t in TASKS.values()} == {"exact", "rouge"}
    assert not set(TASKS) & set(PRETRAIN_TASKS)


@pytest.mark.parametrize(
    ("task", "check"),
    [
        ("copy", lambda i, r: r == i),
        ("reverse", lambda i, r: r == i[::-1]),
        ("sort_chars", lambda i, r: r == "".join(sorted(i))),
        ("sort_num", lambda i, r: r == " ".join(sorted(i.split(), key=int))),
        ("max", lambda i, r: r == str(max(map(int, i.split())))),
        ("add", lambda i, r: r == str(sum(map(int, i.split())))),
        ("capital", lambda i, r: COUNTRIES[i] == r),
        ("count", lambda i, r: r == str(i.split(" in ")[1].count(i.split(" in ")[0]))),
        ("sentiment", lambda i, r: r in ("positive", "negative")),
        ("paraphrase", lambda i, r: r in ("yes", "no") and " | " in i),
    ],
)
def test_answers_follow_the_task_rule(task, check):
    for ex in make_examples(0, task, "train", range(50), prefix_free=True):
        assert check(ex.instruction, ex.response), ex


def test_keyword_prefix_and_prefix_free_mode():
    with_kw = make_example(0, "reverse", "train", 3)
    without = make_example(0, "reverse", "train", 3, prefix_free=True)
    assert with_kw.instruction == f"{TASKS['reverse'].keyword} {without.instruction}"
    assert with_kw.response == without.response


def test_conflicting_tasks_share_one_input_distribution():
    # copy, reverse and sort_chars draw from the same words: without keywords
    # their inputs are indistinguishable, only the mapping differs.
    families = {TASKS[t].family for t in ("copy", "reverse", "sort_chars")}
    assert families == {"words"}
    inputs = {
        t: {e.instruction for e in make_examples(0, t, "train", range(400), prefix_free=True)}
        for t in ("copy", "reverse", "sort_chars")
    }
    for seen in inputs.values():
        assert seen <= set(WORDS) and len(seen) > len(WORDS) // 2
    assert TASKS["sort_num"].family == TASKS["max"].family


def test_generated_text_tasks_have_sentences():
    ex = make_example(0, "summarize", "train", 0)
    assert ex.instruction.startswith("summarize the chat: ") and " and " in ex.response and " at the " in ex.response
    ex = make_example(0, "data_to_text", "train", 0)
    assert " | " in ex.instruction and ex.response.split()[0] in ex.instruction
