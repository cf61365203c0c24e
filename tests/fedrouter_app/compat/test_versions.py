"""The tested ranges of the compatibility fences match what the package declares."""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fedrouter_app.compat import versions
from fedrouter_app.compat.flwr_internals import TESTED_FLWR
from fedrouter_app.compat.peft_internals import TESTED_PEFT
from fedrouter_app.compat.transformers_internals import TESTED_TRANSFORMERS

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def declared() -> dict[str, Requirement]:
    requirements = map(Requirement, tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"])
    return {r.name: r for r in requirements}


@pytest.mark.parametrize(("name", "tested"), [("peft", TESTED_PEFT), ("transformers", TESTED_TRANSFORMERS)])
def test_pyproject_bounds_peft_and_transformers_at_the_fences_range(name, tested):
    assert str(declared()[name].specifier) == str(Requirement(f"{name}{tested}").specifier)


def test_the_flwr_pyproject_pins_is_inside_the_fence():
    (pin,) = declared()["flwr"].specifier
    assert pin.operator == "=="
    assert versions.tested_version_error("flwr", TESTED_FLWR, pin.version, "", "") is None


def test_the_error_names_what_relies_on_the_internals_and_what_to_install():
    assert versions.tested_version_error("lib", ">=1.2,<1.3", "1.2.9", "x", "y") is None
    message = versions.tested_version_error("lib", ">=1.2,<1.3", "1.3.0", "touches lib's insides", "lib==1.2.*")
    assert message == (
        "fedrouter touches lib's insides and was tested with lib >=1.2,<1.3; found 1.3.0. "
        "Install 'lib==1.2.*' (see 'Compatibility' in docs/architecture.md)."
    )
