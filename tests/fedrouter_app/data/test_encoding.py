import copy
import dataclasses

import pytest

from fedrouter_app.data.encoding import (
    IGNORE_INDEX,
    PromptFormat,
    chat_renderer,
    collate,
    collate_prompts,
    encode_example,
    prompt_ids,
)
from fedrouter_app.data.errors import DataError
from fedrouter_app.data.example import Example

EX = Example(task="reverse", instruction="reverse planet", response="tenalp")


def test_loss_covers_response_and_eos_only(adapter_model):
    tok = adapter_model.tokenizer
    fmt = PromptFormat("{instruction} =", " {response}", 96)
    enc = encode_example(tok, EX, fmt)
    prompt = tok("reverse planet =")["input_ids"]
    response = tok(" tenalp", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc.input_ids == prompt + response
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + response
    assert prompt[0] == tok.bos_token_id


def test_truncation_keeps_the_response(adapter_model):
    tok = adapter_model.tokenizer
    long = Example(task="t", instruction="word " * 200, response="yes")
    enc = encode_example(tok, long, PromptFormat("{instruction} =", " {response}", 16))
    assert len(enc.input_ids) == 16
    assert enc.labels[-1] == tok.eos_token_id
    assert (
        sum(label != IGNORE_INDEX for label in enc.labels)
        == len(tok(" yes", add_special_tokens=False)["input_ids"]) + 1
    )


def test_collate_pads_right_and_masks_padding(adapter_model):
    tok = adapter_model.tokenizer
    fmt = PromptFormat("{instruction} =", " {response}", 96)
    encs = [encode_example(tok, EX, fmt), encode_example(tok, Example("copy", "copy a", "a"), fmt)]
    batch = collate(encs, tok.pad_token_id)
    short = len(encs[1].input_ids)
    assert batch["input_ids"].shape[0] == 2
    assert (batch["attention_mask"][1, short:] == 0).all()
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == tok.pad_token_id).all()


def test_prompts_pad_left():
    batch = collate_prompts([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# A small chat template in the shape instruct models ship (it writes the BOS token itself).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def chat_tokenizer(adapter_model):
    tok = copy.deepcopy(adapter_model.tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_chat_format_renders_a_user_turn_and_trains_on_the_response(chat_tokenizer):
    tok = chat_tokenizer
    fmt = PromptFormat("{instruction} =", " {response}", 96, chat=chat_renderer(tok, None))
    assert fmt.prompt(EX) == f"{tok.bos_token}<user>reverse planet</user><assistant>"
    enc = encode_example(tok, EX, fmt)
    prompt = tok(fmt.prompt(EX), add_special_tokens=False)["input_ids"]
    response = tok("tenalp", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc.input_ids == prompt + response  # the templates are not used, the BOS comes once
    assert enc.input_ids.count(tok.bos_token_id) == 1
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + response


def test_chat_system_prompt_comes_first(chat_tokenizer):
    render = chat_renderer(chat_tokenizer, "Be brief.")
    assert render("hi").startswith(f"{chat_tokenizer.bos_token}<system>Be brief.</system><user>hi</user>")


def test_chat_format_needs_a_chat_template(adapter_model):
    tok = copy.deepcopy(adapter_model.tokenizer)
    tok.chat_template = None
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        chat_renderer(tok, None)


def test_format_from_settings(cfg, chat_tokenizer):
    plain = PromptFormat.from_settings(cfg.data, 64, chat_tokenizer)
    assert plain.chat is None and plain.prompt(EX) == cfg.data.prompt_template.format(instruction=EX.instruction)
    chat_data = dataclasses.replace(cfg.data, prompt_format="chat")
    assert PromptFormat.from_settings(chat_data, 64, chat_tokenizer).prompt(EX).endswith("<assistant>")


def test_prompt_ids_adds_no_second_bos(adapter_model):
    tok = adapter_model.tokenizer
    assert prompt_ids(tok, "reverse planet") == prompt_ids(tok, f"{tok.bos_token}reverse planet")


def test_a_huge_field_is_cut_before_it_is_tokenized_and_encodes_as_its_tail_does(adapter_model):
    import time

    tok = adapter_model.tokenizer
    fmt = PromptFormat("{instruction} =", " {response}", 32)
    tail = "the last words reach the model " * 20
    huge = Example(task="t", instruction="x y z " * 3_500_000 + tail, response="yes " * 3_500_000)  # ~21 MB each
    start = time.perf_counter()
    enc = encode_example(tok, huge, fmt)
    assert time.perf_counter() - start < 5.0
    # What reaches the model is the instruction's end and the response's start, as for fields of ordinary length.
    ordinary = Example(task="t", instruction="x y z " * 400 + tail, response="yes " * 400)
    assert enc == encode_example(tok, ordinary, fmt) and len(enc.input_ids) == 32
