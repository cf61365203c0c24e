"""The methods and the configuration resolve in both layouts, and the wheel claims one top-level name."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fedrouter_app.clients
import fedrouter_app.strategies
from fedrouter_app import method_packages
from fedrouter_app.config.compose import CONF_DIR
from fedrouter_app.registry import method_names
from fedrouter_app.runtime.worker_channel import app_code_hash

ROOT = Path(__file__).resolve().parents[2]

INSTALLED_PROBE = """
import json, sys
import fedrouter_app.strategies
from fedrouter_app.config.compose import CONF_DIR, load_run_config
from fedrouter_app.method_packages import installed_layout
from fedrouter_app.registry import method_names
from fedrouter_app.runtime.worker_channel import app_code_hash
json.dump({
    "package": fedrouter_app.__file__,
    "strategies": fedrouter_app.strategies.__file__,
    "conf": str(CONF_DIR),
    "installed": installed_layout(),
    "methods": method_names(),
    "method": load_run_config(["method=fedit"]).method.name,
    "hash": app_code_hash().hex(),
}, sys.stdout)
"""


def test_the_repository_layout_resolves_the_top_level_folders():
    assert not method_packages.installed_layout()
    assert Path(fedrouter_app.strategies.__file__) == ROOT / "strategies" / "__init__.py"
    assert Path(fedrouter_app.clients.__path__[0]) == ROOT / "clients"
    assert CONF_DIR == ROOT / "conf"
    assert {"fedit", "fedrouter", "tap"} <= set(method_names())


def test_the_folders_refuse_a_second_name():
    # Imported as plain `strategies` too, every method would register twice.
    done = subprocess.run(
        [sys.executable, "-c", "import strategies"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: import this package as fedrouter_app.strategies, not strategies"
    )


def test_an_unknown_layout_part_is_refused():
    with pytest.raises(ValueError, match="unknown layout part 'tests'"):
        method_packages.part_dir("tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(ROOT),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("fedrouter-*.whl")
    return built


def test_the_wheel_installs_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"fedrouter_app", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "fedrouter_app/strategies/fedrouter/strategy.py" in names
    assert "fedrouter_app/clients/fedrouter/client.py" in names
    assert "fedrouter_app/conf/config.yaml" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


@pytest.mark.slow
def test_the_installed_layout_runs_the_same_code(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # The unpacked wheel first on the path, run from elsewhere: what `pip install .` gives.
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", INSTALLED_PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert probe["installed"] is True
    assert Path(probe["package"]).parent == site / "fedrouter_app"
    assert Path(probe["strategies"]) == site / "fedrouter_app" / "strategies" / "__init__.py"
    assert Path(probe["conf"]) == site / "fedrouter_app" / "conf"
    assert probe["methods"] == method_names()
    assert probe["method"] == "fedit"
    # A worker from the wheel and a ClientApp from Flower's app bundle of the same code recognise each other.
    assert probe["hash"] == app_code_hash(ROOT).hex()
