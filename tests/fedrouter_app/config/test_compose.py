import dataclasses
import hashlib
import json

import pytest

from fedrouter_app.config.compose import config_fingerprint, load_run_config, overrides_from_run_config
from fedrouter_app.registry import method_names
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.settings import RunConfig


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


@pytest.mark.slow
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
    ("scenario", "n_local", "n_global", "scope"),
    [("dual", 2, 8, "local"), ("single", 1, 8, "local"), ("cross_task", 1, 8, "global"), ("iid", 8, 8, "local")],
)
def test_fedrouter_clusters_follow_the_scenario(scenario, n_local, n_global, scope):
    # One local cluster per task a client holds, one global cluster per task some client trains on.
    cfg = load_run_config([f"scenario={scenario}"])
    assert (cfg.method.n_local, cfg.method.n_global, cfg.eval.scope) == (n_local, n_global, scope)
    assert load_run_config([f"scenario={scenario}", "num_clients=4"]).method.n_global == min(8, 3 + n_local)


def test_lora_layers_outside_the_model_fail_when_the_model_is_known():
    from fedrouter_app.model.loading import lora_template

    cfg = load_run_config(["lora.layers=[5]"])  # the number of blocks is the model's, read with its config
    with pytest.raises(ConfigError, match=r"lora.layers \[5\] outside the model's 2 blocks"):
        lora_template(cfg.model, cfg.lora)
    template = lora_template(cfg.model, load_run_config(["lora.layers=[-1]"]).lora)
    assert template and all(".layers.1." in key for key in template)


def test_held_out_tasks_come_from_the_data_source():
    assert load_run_config(["scenario=unseen"]).scenario.unseen_tasks == ["sort_chars", "summarize"]
    assert load_run_config(["scenario=unseen", "data=bigbench"]).scenario.unseen_tasks == ["fill_blank", "data_to_text"]
    assert load_run_config(["scenario=dual", "data=bigbench"]).scenario.unseen_tasks == []


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
    assert config_fingerprint(load_run_config(["output.save_predictions=off"])) == base
    # A comparison's declaration changes what the report tests, not what a run computes: a resumed sweep skips its jobs.
    declared = ["report.proposed=fedrouter", "report.comparators=[fedit]", "report.claims=[dual:all]"]
    assert config_fingerprint(load_run_config(declared)) == base
    assert config_fingerprint(load_run_config(["seed=1"])) != base


def test_settings_added_later_leave_fingerprints_unchanged_at_their_old_behaviour():
    # A sweep resumed after an upgrade skips its completed jobs: a new setting at the value that keeps the old
    # behaviour does not enter the fingerprint; any other value does.
    from fedrouter_app.config.compose import _as_recorded_before, neutral_settings

    cfg = load_run_config()
    assert (cfg.data.task_prompts, cfg.scenario.shares) == (True, "even")
    stripped = _as_recorded_before(cfg.to_dict())
    # Settings that replaced older ones are written as the older ones were, at the value that behaves the same.
    assert stripped["model"]["dtype"] == "float32" and "precision" not in stripped["model"]
    assert "claims" not in stripped["scenario"] and "wheels_dir" not in stripped["data"]
    for (section, key), neutral in neutral_settings(cfg).items():
        # At its old behaviour a setting is left out (a method setting exists only in its method's config); the
        # defaults that moved on from it (FedRouter's fallback view) stay in.
        if stripped[section].get(key, neutral) == neutral:
            stripped[section].pop(key, None)
    assert cfg.method.router_fallback != neutral_settings(cfg)[("method", "router_fallback")]
    # A section added whole (aggregation) is left out altogether at its neutral values.
    settings = {k: v for k, v in stripped.items() if k not in ("output", "checkpoint", "report") and v != {}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_fingerprint(cfg) == digest
    assert config_fingerprint(load_run_config(["+data.task_prompts=false"])) != digest
    assert config_fingerprint(load_run_config(["aggregation.rule=median"])) != digest
    assert config_fingerprint(load_run_config(["model.precision=bf16-mixed"])) != digest
    assert config_fingerprint(load_run_config(["eval.scope=claims"])) != digest


def test_every_setting_has_help_text():
    from fedrouter_app.schema.settings import SECTIONS

    for cls in (RunConfig, *SECTIONS.values()):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


# The values recorded fingerprints were made without: changing one would make every sweep recorded before it run
# its completed jobs again.
RECORDED_NEUTRAL = {
    ("data", "task_prompts"): True,
    ("data", "prompt_format"): "plain",
    ("data", "system_prompt"): None,
    ("dp", "delta"): 1e-5,
    ("aggregation", "rule"): "mean",
    ("aggregation", "trim_fraction"): 0.1,
    ("aggregation", "num_malicious"): 1,
    ("aggregation", "keep"): 0,
    ("aggregation", "clip_norm"): 1.0,
    ("scenario", "shares"): "even",
    ("scenario", "test_items_per_cell"): None,
    ("scenario", "clients_per_window"): 1,
    ("scenario", "drift"): None,
    ("attack", "kind"): "none",
    ("attack", "fraction"): 0.25,
    ("attack", "start_round"): 1,
    ("attack", "scale"): 10.0,
    ("attack", "std"): 0.0,
    ("attack", "target_task"): None,
    ("attack", "source_task"): None,
}
RECORDED_METHOD_NEUTRAL = {
    "tap": {"unseen_rule": "shared"},
    "fedrouter": {
        "drift_check": False,
        "drift_threshold": 1.25,
        "global_features": "centroids",
        "embedding": "mean",
        "embedding_layer": None,
        "max_client_share": 1.0,
        "centroid_outlier_threshold": 0.0,
        "router_fallback": "none",
        "fallback_quantile": 0.95,
        "fallback_margin": 1.0,
        "fallback_temperature": 1.0,
        "diagnose_routing": "off",
        "local_router_view": True,
    },
}


@pytest.mark.parametrize("method", ["fedit", "tap", "fedrouter", "fltac"])
def test_neutral_values_are_declared_once_by_their_fields_and_match_what_fingerprints_recorded(method):
    from fedrouter_app.config.compose import neutral_settings

    own = {("method", key): value for key, value in RECORDED_METHOD_NEUTRAL.get(method, {}).items()}
    assert neutral_settings(load_run_config([f"method={method}"])) == {**RECORDED_NEUTRAL, **own}
