"""Flower's flat run-config keys: their Hydra keys, checks, conflicts, and num_clients from the federation."""

import json
import tomllib
from pathlib import Path

import pytest

from fedrouter_app.apps.client_app import make_client_app
from fedrouter_app.apps.server_app import federation_size, serve
from fedrouter_app.config.compose import follows_federation, load_run_config
from fedrouter_app.config.run_config import (
    FLAT_KEYS,
    naming_flat_keys,
    overrides_from_run_config,
    pyproject_table,
)
from fedrouter_app.runners.inprocess import InProcessGrid
from fedrouter_app.schema.checks import ConfigError

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
# What Flower passes when `flwr run` is given no --run-config: every declared key, unset.
DECLARED = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def config_error(run_config: dict) -> str:
    """The one-line error of a run config, as the ServerApp reports it."""
    with pytest.raises(ConfigError) as info:
        try:
            load_run_config(overrides_from_run_config(run_config))
        except ConfigError as err:
            raise naming_flat_keys(err, run_config) from None
    message = str(info.value)
    assert "\n" not in message
    return message


def test_pyproject_declares_every_flat_key_unset():
    assert pyproject_table().splitlines()[1:] == [f'{key} = ""' for key in DECLARED]
    assert all(value == "" for value in DECLARED.values())


def test_unset_keys_override_nothing():
    assert overrides_from_run_config(DECLARED) == []
    assert overrides_from_run_config({}) == []


def test_each_flat_key_sets_its_hydra_key():
    values = {
        "method": "fedit",
        "scenario": "single",
        "model": "tiny",
        "data": "synthetic",
        "num-server-rounds": 3,
        "num-clients": 5,
        "fraction-train": 0.5,
        "fraction-evaluate": 1,
        "local-steps": 7,
        "batch-size": 4,
        "lr": 0.002,
        "lora-r": 4,
        "seed": 9,
        "run-name": "my run",
    }
    assert set(values) == {key.name for key in FLAT_KEYS}
    cfg = load_run_config(overrides_from_run_config({**DECLARED, **values}))
    assert (cfg.method.name, cfg.scenario.name, cfg.data.source) == ("fedit", "single", "synthetic")
    assert (cfg.num_rounds, cfg.num_clients, cfg.fraction_train, cfg.fraction_evaluate) == (3, 5, 0.5, 1.0)
    assert (cfg.train.local_steps, cfg.train.batch_size, cfg.train.lr, cfg.lora.r) == (7, 4, 0.002, 4)
    assert (cfg.seed, cfg.output.run_name) == (9, "my run")


def test_overrides_keep_everything_else():
    run_config = {**DECLARED, "num-server-rounds": 2, "overrides": "train.lr_min=0 sweep=compare"}
    assert overrides_from_run_config(run_config) == ["num_rounds=2", "train.lr_min=0", "sweep=compare"]
    # A flat key is a command-line override: it wins over the preset picked in overrides.
    assert load_run_config(overrides_from_run_config(run_config)).num_rounds == 2


@pytest.mark.parametrize(
    ("run_config", "fragments"),
    [
        ({"num-server-rounds": 0}, ["'num-server-rounds'", "num_rounds must be >= 1, got 0"]),
        ({"fraction-train": 1.5}, ["'fraction-train'", "fraction_train must be in (0, 1]"]),
        ({"lr": -1.0}, ["'lr'", "train.lr > 0"]),
        ({"lora-r": 0}, ["'lora-r'", "lora.r must be >= 1"]),
        ({"method": "fedavgg"}, ["'method'", "unknown method 'fedavgg'", "fedit"]),
        ({"num-server-rounds": "many"}, ["'num-server-rounds'", "must be an int", "num-server-rounds=5"]),
        ({"lr": True}, ["'lr'", "must be a float"]),
        ({"rounds": 3}, ["unknown run config key(s) 'rounds'", "num-server-rounds"]),
        ({"seed": 1, "overrides": "seed=2"}, ["seed is given twice", "'seed'", "give it once"]),
        ({"method": "local", "overrides": "+method=fedit"}, ["method is given twice"]),
        ({"overrides": "num_rounds='3"}, ["cannot parse overrides"]),
    ],
)
def test_bad_values_give_one_line_naming_the_flat_key(run_config, fragments):
    message = config_error({**DECLARED, **run_config})
    assert all(fragment in message for fragment in fragments), message


def test_errors_about_other_keys_are_left_alone():
    message = config_error({**DECLARED, "lr": 0.001, "overrides": "train.batch_size=0"})
    assert message.startswith("train.batch_size must be >= 1"), message


def test_num_clients_follows_the_federation_unless_set():
    assert follows_federation([]) and follows_federation(["sweep=compare"])
    assert not follows_federation(["num_clients=4"]) and not follows_federation(["sweep=paper"])
    assert load_run_config([]).num_clients == 8
    assert load_run_config([], federation_size=3).num_clients == 3
    assert load_run_config(["num_clients=5"], federation_size=3).num_clients == 5


def test_server_counts_the_nodes_only_when_num_clients_is_unset():
    grid = InProcessGrid(make_client_app(), 3)
    assert federation_size(grid, []) == 3
    assert federation_size(grid, ["num_clients=3"]) is None


def test_run_without_num_clients_has_one_client_per_node():
    """Through the real ServerApp and ClientApp code: clients learn num_clients from the server's messages."""
    run_config = {
        **DECLARED,
        "method": "fedit",
        "num-server-rounds": 1,
        "local-steps": 1,
        "batch-size": 4,
        "run-name": "federation-size",
        "overrides": "eval.at_start=false scenario.train_examples_per_client=8 scenario.test_examples_per_task=2",
    }
    grid = InProcessGrid(make_client_app(), 3)
    for context in grid.contexts.values():
        context.run_config = dict(run_config)
        del context.node_config["num-partitions"]  # a SuperNode started without it
    run_dir = serve(grid, overrides_from_run_config(run_config))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["status"] == "completed"
    assert results["config"]["num_clients"] == 3 and results["config"]["train"]["local_steps"] == 1
    assert sorted(results["rounds"][-1]["train"]["clients"]) == ["0", "1", "2"]


def test_the_flat_keys_work_wherever_hydra_keys_do():
    from fedrouter_app.config.compose import load_run_config
    from fedrouter_app.config.run_config import hydra_overrides

    cfg = load_run_config(["num-server-rounds=3", "lr=0.01", "local-steps=2", "run-name=trial"])
    assert (cfg.num_rounds, cfg.train.lr, cfg.train.local_steps, cfg.output.run_name) == (3, 0.01, 2, "trial")
    # Sweeps keep their lists, overrides their prefixes; Hydra keys, groups and Hydra's own flags pass unchanged.
    assert hydra_overrides(["-m", "lr=0.001,0.003", "+num-clients=4", "method=fedit", "hydra.sweep.dir=x"]) == [
        "-m", "train.lr=0.001,0.003", "+num_clients=4", "method=fedit", "hydra.sweep.dir=x",
    ]  # fmt: skip


def test_a_bad_flat_key_value_names_the_flat_key_and_the_rule():
    import pytest

    from fedrouter_app.cli.main import main
    from fedrouter_app.config.compose import load_run_config
    from fedrouter_app.schema.checks import ConfigError

    with pytest.raises(ConfigError, match=r"run config key 'num-server-rounds' \(num_rounds='0'\): .*must be >= 1"):
        load_run_config(["num-server-rounds=0"])
    assert main(["run", "num-server-rounds=0"]) == 2
