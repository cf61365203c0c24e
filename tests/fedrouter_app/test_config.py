import dataclasses

import pytest

from fedrouter_app.config import config_fingerprint, load_run_config, overrides_from_run_config
from fedrouter_app.registry import method_names
from fedrouter_app.settings import ConfigError, RunConfig


def one_line_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_compose_into_typed_settings():
    cfg = load_run_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.method.name == "fedrouter" and cfg.scenario.name == "dual"
    assert cfg.lora.target_modules and cfg.train.lr > 0
    assert dataclasses.is_dataclass(cfg.method)


def test_every_registered_method_and_scenario_composes():
    for method in method_names():
        for scenario in ("single", "dual", "iid"):
            cfg = load_run_config([f"method={method}", f"scenario={scenario}"])
            assert cfg.method.name == method and cfg.scenario.name == scenario
    assert load_run_config(["scenario=iid"]).scenario.tasks_per_client == len(load_run_config().data.tasks)


def test_unknown_method_lists_the_choices():
    message = one_line_error("method=fedavgg")
    assert "unknown method 'fedavgg'" in message
    assert all(name in message for name in method_names())


def test_unknown_scenario_lists_the_choices():
    message = one_line_error("scenario=triple")
    assert "unknown scenario 'triple'" in message and "dual" in message and "single" in message


def test_unknown_keys_list_the_valid_keys():
    message = one_line_error("train.learning_rate=0.1")
    assert "train.learning_rate" in message and "lr" in message and "local_steps" in message
    assert "num_rounds" in one_line_error("rounds=3")
    assert "weighting" in one_line_error("+method.mu=0.1")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.lr=fast", "train.lr"),
        ("fraction_train=0", "fraction_train"),
        ("num_clients=0", "num_clients"),
        ("data.tasks=[copy,nope]", "'nope'"),
        ("scenario.tasks_per_client=99", "tasks_per_client"),
        ("method.weighting=median", "cluster_size, client_size, uniform"),
        ("eval.scope=everything", "eval.scope"),
        ("model.dtype=int8", "model.dtype"),
        ("train.lr_schedule=linear", "cosine"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    assert fragment in one_line_error(override)


def test_flower_run_config_becomes_overrides():
    assert overrides_from_run_config({"method": "", "scenario": "", "overrides": ""}) == []
    got = overrides_from_run_config(
        {"method": "local", "scenario": "single", "overrides": "num_rounds=3 'train.lr=0.1'"}
    )
    assert got == ["method=local", "scenario=single", "num_rounds=3", "train.lr=0.1"]
    with pytest.raises(ConfigError, match="cannot parse"):
        overrides_from_run_config({"overrides": "a='unclosed"})


def test_fingerprint_tracks_settings_but_not_outputs():
    base = config_fingerprint(load_run_config())
    assert config_fingerprint(load_run_config(["output.run_name=x"])) == base
    assert config_fingerprint(load_run_config(["seed=1"])) != base


def test_every_setting_has_help_text():
    from fedrouter_app.settings import SECTIONS

    for cls in (RunConfig, *SECTIONS.values()):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
