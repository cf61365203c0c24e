"""LoRA target modules: per-architecture defaults that match real module names, and the settings' forms."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from fedrouter_app.model.loading import lora_config, model_path
from fedrouter_app.model.targets import TARGET_MODULES, resolve_target_modules
from fedrouter_app.schema.checks import ConfigError

# One architecture per naming scheme in the table.
ARCHITECTURES = ["llama", "qwen2", "gemma", "phi3", "phi", "gpt2", "gpt_neox", "opt"]


# peft notes that GPT-2's Conv1D layers need fan_in_fan_out and sets it itself.
@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_default_name_exists_in_the_architecture(model_type):
    config = AutoConfig.for_model(model_type, num_hidden_layers=1)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    targets = resolve_target_modules("auto", model_type)
    assert targets == list(TARGET_MODULES[model_type])
    peft_model = get_peft_model(skeleton, LoraConfig(r=2, target_modules=targets, task_type="CAUSAL_LM"))
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(targets)


def test_settings_forms():
    assert resolve_target_modules(None, "llama") == resolve_target_modules("auto", "llama")
    assert resolve_target_modules("auto", "some_new_arch") == "all-linear"
    assert resolve_target_modules("all-linear", "llama") == "all-linear"
    assert resolve_target_modules(["q_proj", "v_proj"], "gpt2") == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="target_modules"):
        resolve_target_modules("q_proj", "llama")


def test_config_default_is_auto_and_resolves_on_the_embedded_llama(cfg, make_cfg):
    assert cfg.lora.target_modules == "auto"
    assert lora_config(cfg.lora, model_path(cfg.model)).target_modules == set(TARGET_MODULES["llama"])
    assert make_cfg("lora.target_modules=[q_proj,v_proj]").lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match=r"lora\.target_modules"):
        make_cfg("lora.target_modules=q_proj")


def test_target_modules_the_model_lacks_are_one_line_listing_the_names_it_has(cfg):
    import dataclasses

    import pytest

    from fedrouter_app.model.loading import load_adapter_model
    from fedrouter_app.schema.checks import ConfigError

    lora = dataclasses.replace(cfg.lora, target_modules=["q_proj", "nope_proj"])
    with pytest.raises(ConfigError, match=r"\['nope_proj'\] are not linear layers of this model; .*q_proj.*v_proj"):
        load_adapter_model(cfg.model, lora)


def test_a_model_name_that_names_nothing_is_one_line(cfg, tmp_path):
    import dataclasses

    import pytest

    from fedrouter_app.model.loading import hidden_size
    from fedrouter_app.schema.checks import ConfigError

    for name in (str(tmp_path / "no-model-here"), "no-such-owner/no-such-model-xyz"):
        settings = dataclasses.replace(cfg.model, source="huggingface", name=name)
        with pytest.raises(ConfigError, match=r"model.name=.*: no model there") as err:
            hidden_size(settings)
        assert "\n" not in str(err.value)
