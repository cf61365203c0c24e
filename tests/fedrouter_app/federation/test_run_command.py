"""The recorded ``flwr run`` command names the runtime's federation: a re-run goes where the run went."""

from __future__ import annotations

import shlex
import sys
import tomllib

from fedrouter_app.federation.run_command import DEPLOYMENT, SIMULATION, connection_name, reproduce_command

OVERRIDES = ["method=fedrouter", "num_clients=3", "method.n_global=3"]


def test_a_simulation_run_gives_the_federations_size():
    command = reproduce_command(OVERRIDES, SIMULATION, 3)
    assert command == (
        "flwr run . --stream --run-config \"method='fedrouter' overrides='num_clients=3 method.n_global=3'\" "
        '--federation-config "num-supernodes=3"'
    )
    assert shlex.split(command) == [
        "flwr",
        "run",
        ".",
        "--stream",
        "--run-config",
        "method='fedrouter' overrides='num_clients=3 method.n_global=3'",
        "--federation-config",
        "num-supernodes=3",
    ]


def test_a_deployment_run_names_the_connection_to_its_superlink(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n[superlink.local]\naddress = ":local:"\n'
        '[superlink.deploy]\naddress = "localhost:9093"\ninsecure = true\n'
    )
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["flwr-serverapp", "--runtime-api-address", "127.0.0.1:9093", "--insecure"])
    assert shlex.split(reproduce_command(OVERRIDES, DEPLOYMENT, 3))[:5] == ["flwr", "run", ".", "deploy", "--stream"]
    assert connection_name("10.0.0.1:9093", tmp_path / "config.toml") == "<connection to 10.0.0.1:9093>"
    assert connection_name("127.0.0.1:9094", tmp_path / "config.toml") == "<connection to 127.0.0.1:9094>"


def test_overrides_that_need_quotes_survive_the_shell_and_toml():
    overrides = ["method=fedit", "'data.tables=[{path:/d/x y.jsonl,task:a}]'", "train.lr=1e-3"]
    words = shlex.split(reproduce_command(overrides, SIMULATION, 2))
    run_config = tomllib.loads(words[words.index("--run-config") + 1].replace(" overrides=", "\noverrides="))
    assert run_config["method"] == "fedit" and shlex.split(run_config["overrides"]) == overrides[1:]
