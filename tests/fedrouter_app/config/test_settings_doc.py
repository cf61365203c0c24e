"""The configuration reference covers every settings key with its help, and docs/reference.md matches the code."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from fedrouter_app.config import settings_doc
from fedrouter_app.markers import splice
from fedrouter_app.registry import method_config_class, method_names
from fedrouter_app.schema.settings import RunConfig

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "docs" / "reference.md"


def dotted_keys(cls: type, prefix: str = "") -> dict[str, str]:
    """Every field of ``cls`` and the dataclasses it nests, as dotted key -> help text (walked independently)."""
    found = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        found[key] = f.metadata.get("help", "")
        annotation = hints[f.name]
        args = (annotation,) if typing.get_origin(annotation) is list else typing.get_args(annotation) or (annotation,)
        for arg in args:
            inner = typing.get_args(arg)
            if typing.get_origin(arg) is list and inner and dataclasses.is_dataclass(inner[0]):
                found |= dotted_keys(inner[0], f"{key}[].")
            elif dataclasses.is_dataclass(arg):
                found |= dotted_keys(arg, f"{key}.")
    return found


@pytest.fixture(scope="module")
def tables():
    return settings_doc.all_rows()


def test_every_run_setting_has_a_row_with_its_help(tables):
    expected = {k: h for k, h in dotted_keys(RunConfig).items() if k != "method"}
    rows = {row.key: row for row in tables["run"]}
    assert set(rows) == set(expected)
    for key, help_text in expected.items():
        assert help_text.strip(), f"{key} has no help text"
        assert rows[key].help == help_text
        assert rows[key].type


def test_every_registered_method_has_a_table_with_every_field(tables):
    assert set(tables) == {"run", *method_names()}
    for name in method_names():
        expected = dotted_keys(method_config_class(name), "method.")
        rows = {row.key: row for row in tables[name]}
        assert set(rows) == set(expected), name
        for key, help_text in expected.items():
            assert help_text.strip(), f"{name}: {key} has no help text"
            assert rows[key].help == help_text
            assert rows[key].default != settings_doc.REQUIRED, f"{name}: conf/method/{name}.yaml lacks {key}"
    assert settings_doc.check_help() == []


def test_defaults_come_from_conf(tables):
    run = {row.key: row for row in tables["run"]}
    assert run["num_rounds"].default == "10"
    assert run["scenario.name"].default == "dual"
    assert run["data.tables[].path"].default == settings_doc.REQUIRED
    method = {row.key: row for row in tables["fedavg_ft"]}
    assert method["method.finetune_lr"].default == "${train.lr}"  # interpolations shown as written
    assert {row.key: row for row in tables["fedrouter"]}["method.embedding_layer"].default == "null"


def test_types_and_cells():
    assert settings_doc.type_name(int | None) == "int or null"
    assert settings_doc.type_name(list[str]) == "list of str"
    assert settings_doc.type_name(typing.Any) == "any"
    line = settings_doc.table([settings_doc.Row("a.b", "str", "x|y", "mu/2 * ||w|| on <path>")]).splitlines()[-1]
    assert line == r"| `a.b` | str | `x\|y` | mu/2 \* \|\|w\|\| on &lt;path&gt; |"


def test_committed_reference_is_up_to_date(tables):
    committed = REFERENCE.read_text(encoding="utf-8")
    fresh = splice(committed, settings_doc.MARKER, settings_doc.render(tables) + "\n")
    assert committed == fresh, (
        "docs/reference.md is stale: python -m fedrouter_app.config.settings_doc --into docs/reference.md"
    )


def test_committed_method_keys_are_up_to_date():
    committed = settings_doc.METHOD_KEYS_FILE.read_text(encoding="utf-8")
    assert committed == settings_doc.method_keys_text(), (
        "fedrouter_app/config/method_keys.json is stale: "
        "python -m fedrouter_app.config.settings_doc --method-keys fedrouter_app/config/method_keys.json"
    )


@pytest.mark.parametrize("name", ["fedit", "fedprox", "fedrouter", "tap"])
def test_stored_method_fields_give_the_rows_the_dataclass_gives(name):
    values = settings_doc.composed([f"method={name}"], resolve=True)[settings_doc.METHOD_KEY]
    stored = settings_doc.stored_method_specs(name)
    assert stored is not None
    live = settings_doc.rows_of(method_config_class(name), "method.", values)
    assert settings_doc.spec_rows(stored, "method.", values) == live


def test_settings_help_asks_the_method_when_its_stored_keys_miss_one(monkeypatch):
    from fedrouter_app.config import settings_help

    stored = settings_doc.stored_method_specs("fedprox")
    assert stored is not None
    monkeypatch.setattr(settings_doc, "stored_method_specs", lambda name: [s for s in stored if s.name != "mu"])
    monkeypatch.setattr(settings_help, "stored_method_specs", settings_doc.stored_method_specs)
    mu = settings_help.find_setting("method.mu", ["method=fedprox"])
    assert [s.key for s in mu] == ["method.mu"] and mu[0].help
