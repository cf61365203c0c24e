from fedrouter_app.data.encoding import IGNORE_INDEX, PromptFormat, collate, collate_prompts, encode_example
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
