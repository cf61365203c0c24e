import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from fedrouter_app.model.loading import lora_config, lora_template, model_path
from fedrouter_app.model.lora import initial_lora_state, is_lora_a, is_lora_b, save_peft_adapter


def test_server_template_matches_the_client_model(cfg, adapter_model):
    # The server derives the template on the meta device, without weights.
    assert lora_template(cfg.model, cfg.lora) == adapter_model.template


def test_initial_state_is_seeded_and_starts_as_identity(adapter_model):
    a, b = adapter_model.initial_state(0), adapter_model.initial_state(0)
    other = adapter_model.initial_state(1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        if is_lora_b(key):
            assert not a[key].any()
        else:
            assert is_lora_a(key) and a[key].std() > 0 and not np.array_equal(a[key], other[key])


def test_initial_state_does_not_depend_on_key_order(adapter_model):
    template = adapter_model.template
    reversed_template = dict(reversed(list(template.items())))
    s1, s2 = initial_lora_state(template, 3), initial_lora_state(reversed_template, 3)
    assert all(np.array_equal(s1[k], s2[k]) for k in template)


def test_identity_adapter_leaves_the_model_unchanged(adapter_model):
    ids = torch.tensor([[1, 5, 9, 12]])
    adapter_model.load_state(adapter_model.initial_state(0))
    with torch.no_grad():
        with_adapter = adapter_model.model(input_ids=ids).logits
        with adapter_model.model.disable_adapter():
            base = adapter_model.model(input_ids=ids).logits
    torch.testing.assert_close(with_adapter, base)


def random_state(adapter_model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v).astype(np.float32) * 0.1 for k, v in adapter_model.template.items()}


def test_server_written_adapter_loads_with_peft(cfg, adapter_model, tmp_path):
    state = random_state(adapter_model)
    save_peft_adapter(state, lora_config(cfg.lora, model_path(cfg.model)), tmp_path / "a")
    base = AutoModelForCausalLM.from_pretrained(model_path(cfg.model))
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "a"))
    params = {n.replace(".default", ""): p for n, p in loaded.named_parameters() if "lora_" in n}
    assert params.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(params[key].detach().numpy(), value)


def test_peft_save_pretrained_matches_our_keys(adapter_model, tmp_path):
    state = random_state(adapter_model, seed=1)
    adapter_model.save_adapter(state, tmp_path / "b")
    saved = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert saved.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(saved[key], value)
