"""Sentence embeddings: batching never changes a text's embedding; pooling, layers and prefixes pick what they say."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedrouter_app.data.encoding import collate_prompts, prompt_ids
from fedrouter_app.data.synthetic import TASKS, make_examples
from fedrouter_app.ml.embedding import InstructionPrefixes, embed_texts, pool_hidden, prefix_token_counts
from fedrouter_app.schema.data import TableSettings


def test_length_sorted_batches_give_every_text_its_own_embedding(adapter_model):
    texts = [
        e.instruction for task in ("copy", "summarize", "capital") for e in make_examples(0, task, "test", range(5))
    ]
    one_by_one = np.stack([embed_texts(adapter_model, [t], batch_size=1)[0] for t in texts])
    consecutive = embed_texts(adapter_model, texts, batch_size=4, by_length=False)
    sorted_batches = embed_texts(adapter_model, texts, batch_size=4, by_length=True)
    np.testing.assert_allclose(sorted_batches, one_by_one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(consecutive, one_by_one, rtol=1e-4, atol=1e-5)
    assert len({round(float(v), 4) for v in sorted_batches[:, 0]}) > 3


# Pooling on hand-made states: row r, position t holds the value 10 r + t in every dimension.
HIDDEN = torch.tensor([[[10.0 * r + t] * 2 for t in range(5)] for r in range(3)])
LEFT_PADDED = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])


def test_mean_pooling_averages_the_real_tokens_only():
    pooled = pool_hidden(HIDDEN, LEFT_PADDED, "mean")
    np.testing.assert_allclose(pooled[:, 0].numpy(), [3.0, 12.0, 24.0])


def test_last_token_pooling_takes_the_last_real_position_whatever_the_padding_side():
    np.testing.assert_allclose(pool_hidden(HIDDEN, LEFT_PADDED, "last")[:, 0].numpy(), [4.0, 14.0, 24.0])
    right_padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    np.testing.assert_allclose(pool_hidden(HIDDEN, right_padded, "last")[:, 0].numpy(), [2.0, 14.0, 20.0])


def test_prefix_pooling_averages_the_first_real_tokens_after_left_padding():
    # Row 0's real tokens sit at positions 2..4: its first two are 2 and 3; row 1 keeps 0..2; row 2 its only one.
    keep = torch.tensor([2, 3, 4])
    np.testing.assert_allclose(pool_hidden(HIDDEN, LEFT_PADDED, "prefix", keep)[:, 0].numpy(), [2.5, 11.0, 24.0])
    # Keeping every token is mean pooling.
    everything = torch.tensor([3, 5, 1])
    torch.testing.assert_close(
        pool_hidden(HIDDEN, LEFT_PADDED, "prefix", everything), pool_hidden(HIDDEN, LEFT_PADDED, "mean")
    )
    with pytest.raises(ValueError, match="number of tokens to keep"):
        pool_hidden(HIDDEN, LEFT_PADDED, "prefix")
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_hidden(HIDDEN, LEFT_PADDED, "max")


def test_prefix_tokens_are_those_starting_inside_the_prefix(adapter_model):
    tokenizer = adapter_model.tokenizer
    text = "repeat the word apple"
    ids = prompt_ids(tokenizer, text)
    # BOS plus the tokens of "repeat the word"; " apple" starts at the space, outside the 15 characters.
    prefix = prompt_ids(tokenizer, "repeat the word")
    assert prefix_token_counts(tokenizer, [text], [15]) == [len(prefix)]
    assert ids[: len(prefix)] == prefix and len(ids) > len(prefix)
    assert prefix_token_counts(tokenizer, [text, text], [len(text), 0]) == [len(ids), 1]


def test_prefix_embedding_depends_on_the_prefix_alone(adapter_model):
    texts = ["repeat the word apple", "repeat the word window", "spell backwards apple"]
    ends = [len("repeat the word")] * 2 + [len("spell backwards")]
    pooled = embed_texts(adapter_model, texts, pooling="prefix", prefix_chars=ends, batch_size=3)
    # Causal attention: the prefix tokens' states do not see the input that follows.
    np.testing.assert_allclose(pooled[0], pooled[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(pooled[0], pooled[2], atol=1e-3)
    # A prefix covering the whole text is mean pooling.
    whole = embed_texts(adapter_model, texts, pooling="prefix", prefix_chars=[len(t) for t in texts], batch_size=3)
    np.testing.assert_allclose(whole, embed_texts(adapter_model, texts, batch_size=3), rtol=1e-5, atol=1e-6)


def test_last_token_embedding_is_the_final_state_of_the_text(adapter_model):
    texts = ["repeat the word apple", "capital city of france and more words"]
    backbone = adapter_model.model.get_base_model().base_model
    pooled = embed_texts(adapter_model, texts, pooling="last", batch_size=2)
    for text, row in zip(texts, pooled, strict=True):
        ids = torch.tensor([prompt_ids(adapter_model.tokenizer, text)])
        with torch.no_grad(), adapter_model.model.disable_adapter():
            alone = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, -1]
        np.testing.assert_allclose(row, alone.float().numpy(), rtol=1e-4, atol=1e-5)


def test_layer_selects_that_hidden_state(adapter_model):
    texts = ["repeat the word apple", "spell backwards window"]
    default = embed_texts(adapter_model, texts, batch_size=2)
    # -1 is the last hidden state, which the model returns after its final norm: the default.
    np.testing.assert_allclose(embed_texts(adapter_model, texts, batch_size=2, layer=-1), default, rtol=1e-6)
    # 0 is the token embeddings: the mean of the embedding rows of each text's tokens.
    table = adapter_model.model.get_base_model().base_model.embed_tokens.weight.detach().float()
    expected = np.stack([table[prompt_ids(adapter_model.tokenizer, t)].mean(dim=0).numpy() for t in texts])
    np.testing.assert_allclose(embed_texts(adapter_model, texts, batch_size=2, layer=0), expected, rtol=1e-5, atol=1e-6)
    # A middle block differs from both, and its negative index is the same state.
    blocks = adapter_model.model.get_base_model().config.num_hidden_layers
    middle = embed_texts(adapter_model, texts, batch_size=2, layer=1)
    assert not np.allclose(middle, default, atol=1e-3) and not np.allclose(middle, expected, atol=1e-3)
    np.testing.assert_array_equal(embed_texts(adapter_model, texts, batch_size=2, layer=1 - (blocks + 1)), middle)
    for bad in (blocks + 1, -(blocks + 2)):
        with pytest.raises(ValueError, match="hidden states"):
            embed_texts(adapter_model, texts, layer=bad)


def test_prefix_chars_must_come_with_prefix_pooling(adapter_model):
    with pytest.raises(ValueError, match="prefix_chars is needed"):
        embed_texts(adapter_model, ["a b"], pooling="prefix")
    with pytest.raises(ValueError, match="prefix_chars is needed"):
        embed_texts(adapter_model, ["a b"], prefix_chars=[1])
    with pytest.raises(ValueError, match="entries for 1 texts"):
        embed_texts(adapter_model, ["a b"], pooling="prefix", prefix_chars=[1, 2])


def test_synthetic_prefix_is_the_task_keyword(cfg):
    prefixes = InstructionPrefixes.from_data(cfg.data)
    for task in ("copy", "sort_num", "sentiment", "summarize"):
        instruction = make_examples(0, task, "train", [0])[0].instruction
        assert instruction[: prefixes.end(instruction)] == TASKS[task].keyword
    # Prefix-free data has no task text to separate: the whole instruction is used.
    free = InstructionPrefixes.from_data(replace(cfg.data, prefix_free=True))
    text = make_examples(0, "copy", "train", [0], prefix_free=True)[0].instruction
    assert free.end(text) == len(text)


def test_table_prefixes_named_prompts_and_context_columns(cfg):
    def data(*tables, task_prompts=True):
        return replace(cfg.data, source="files", tables=list(tables), task_prompts=task_prompts)

    table = TableSettings(path="x.jsonl", task="t", prefix="Describe the restaurant: ")
    prefixes = InstructionPrefixes.from_data(data(table))
    assert prefixes.end("Describe the restaurant: name[Aromi]") == len("Describe the restaurant:")
    assert prefixes.end("no prefix here\nsecond line") == len("no prefix here\nsecond line")
    named = TableSettings(path="glue", task="paraphrase", mapping="qqp")
    text = "Do these two questions ask the same thing?\nQuestion 1: a\nQuestion 2: b"
    assert InstructionPrefixes.from_data(data(named)).end(text) == text.index("\n")
    # Raw inputs (data.task_prompts=false) have no task prompt to separate.
    assert InstructionPrefixes.from_data(data(named, task_prompts=False)).end(text) == len(text)
    context = TableSettings(path="dolly", task_field="category", context_field="context")
    text = "Summarize this paragraph.\n\nThe paragraph\nin two lines."
    assert InstructionPrefixes.from_data(data(context)).end(text) == len("Summarize this paragraph.")
    assert InstructionPrefixes().end("anything") == len("anything")


def test_prefix_ends_where_collated_tokens_say(adapter_model, cfg):
    # End to end on synthetic instructions: the pooled tokens are exactly the keyword's (BOS included).
    prefixes = InstructionPrefixes.from_data(cfg.data)
    tokenizer = adapter_model.tokenizer
    for task in ("copy", "capital", "sentiment"):
        text = make_examples(0, task, "train", [3])[0].instruction
        (count,) = prefix_token_counts(tokenizer, [text], [prefixes.end(text)])
        assert count == len(prompt_ids(tokenizer, TASKS[task].keyword))
    batch = collate_prompts([prompt_ids(tokenizer, "a b c"), prompt_ids(tokenizer, "a")], tokenizer.pad_token_id)
    assert batch["attention_mask"][1, 0] == 0  # left padding, as pool_hidden's tests assume
