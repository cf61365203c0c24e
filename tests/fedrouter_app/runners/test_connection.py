"""``fedrouter-connection``: the SuperLink connection entry, written the same way however often it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedrouter_app.runners.connection import main

REPO = Path(__file__).resolve().parents[3]


def run(*args: str, home: Path, flwr_home: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FLWR_HOME"}
    env["HOME"] = str(home)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    code = "from fedrouter_app.runners.connection import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("with_flwr_home", [True, False])
def test_the_entry_is_written_once_beside_flowers_defaults_and_follows_flwr_home(tmp_path, with_flwr_home):
    flwr_home = tmp_path / "elsewhere" if with_flwr_home else None
    config = (flwr_home or tmp_path / ".flwr") / "config.toml"
    for _ in range(2):
        proc = run("deploy", "--address", "127.0.0.1:9093", "--insecure", home=tmp_path, flwr_home=flwr_home)
        assert proc.returncode == 0, proc.stderr
    parsed = tomllib.loads(config.read_text())
    assert parsed["superlink"]["default"] == "local"  # plain `flwr ls` still has a default connection
    assert parsed["superlink"]["deploy"] == {"address": "127.0.0.1:9093", "insecure": True}
    assert config.read_text().count("[superlink.deploy]") == 1
    assert not (tmp_path / ".flwr").exists() or not with_flwr_home


def test_an_entry_is_replaced_and_others_kept(tmp_path):
    for args in (["a", "--address", "h:1", "--insecure"], ["b", "--address", "h:2", "--insecure"]):
        assert run(*args, home=tmp_path, flwr_home=tmp_path).returncode == 0
    ca = tmp_path / "ca.crt"
    ca.write_text("cert")
    assert (
        run("a", "--address", "h:3", "--root-certificates", str(ca), home=tmp_path, flwr_home=tmp_path).returncode == 0
    )
    parsed = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert parsed["a"] == {"address": "h:3", "root-certificates": str(ca)} and parsed["b"]["address"] == "h:2"


def test_bad_input_gets_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["deploy", "--address", "nohost", "--insecure"])
    assert "expected host:port" in capsys.readouterr().err
    (tmp_path / "config.toml").write_text("[superlink\n")
    proc = run("deploy", "--address", "h:1", "--insecure", home=tmp_path, flwr_home=tmp_path)
    assert proc.returncode == 1 and "valid TOML" in proc.stderr


def test_wait_gives_up_on_a_superlink_that_never_answers(tmp_path):
    proc = run("deploy", "--address", "127.0.0.1:9", "--insecure", "--wait", "1", home=tmp_path, flwr_home=tmp_path)
    assert proc.returncode == 1 and "did not answer within 1 s" in proc.stderr
