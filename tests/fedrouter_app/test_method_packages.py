"""A package of another distribution named ``strategies`` or ``clients`` fails in one line, at import."""

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import clients
import strategies
from fedrouter_app import method_packages
from fedrouter_app.method_packages import MethodPackageError, check_marker, check_method_packages

ROOT = Path(__file__).resolve().parents[2]


def foreign_package(parent: Path, name: str) -> Path:
    (parent / name).mkdir()
    (parent / name / "__init__.py").write_text('"""Somebody else\'s package."""\n')
    return parent


def test_ours_pass_both_checks():
    check_method_packages()
    check_marker(strategies)
    check_marker(clients)


@pytest.mark.parametrize("name", ["strategies", "clients"])
def test_a_package_of_the_same_name_earlier_on_the_path_is_named(tmp_path, monkeypatch, name):
    monkeypatch.syspath_prepend(str(foreign_package(tmp_path, name)))
    monkeypatch.delitem(sys.modules, name)  # find_spec answers from sys.modules for an imported package
    with pytest.raises(MethodPackageError) as error:
        check_method_packages()
    message = str(error.value)
    assert "\n" not in message
    assert f"'{name}' resolves to {tmp_path / name / '__init__.py'}" in message
    assert "another installed package is called" in message


def test_a_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MethodPackageError, match="'strategies' is not an importable package"):
        check_method_packages()
    assert method_packages.METHOD_PACKAGES == ("strategies", "clients")


def test_a_package_without_our_marker_is_refused():
    with pytest.raises(MethodPackageError, match="'clients' imported is not fedrouter's"):
        check_marker(types.ModuleType("clients"))


def test_importing_fedrouter_app_next_to_a_foreign_strategies_fails_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(foreign_package(tmp_path, "strategies")), str(ROOT)])}
    command = [sys.executable, "-c", "import fedrouter_app"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "fedrouter_app.method_packages.MethodPackageError: fedrouter's method package 'strategies' resolves to"
        )
    )
