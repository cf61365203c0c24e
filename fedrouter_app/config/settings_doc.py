"""The configuration reference, generated from the settings dataclasses' types and help text.

Every key of :class:`~fedrouter_app.schema.settings.RunConfig` (nested sections
included) and of each registered method's config dataclass becomes one row:
dotted key, type, default and help. The default is the value ``conf/`` gives
the key in the default composition (``conf/config.yaml``; for a method,
``conf/method/<name>.yaml``), shown as written there (interpolations such as
``${train.lr}`` unresolved), or else the dataclass default. Keys with neither
must be set by a config group (``required``)::

    python -m fedrouter_app.config.settings_doc --into docs/reference.md

replaces what lies between ``<!-- settings:start -->`` and ``<!-- settings:end -->``
in that file; without ``--into`` the tables are printed.

``fedrouter config`` answers without importing the methods (their modules pull
torch, transformers and Flower): it reads the fields of each method's config
dataclass from :data:`METHOD_KEYS_FILE`, which this module writes too::

    python -m fedrouter_app.config.settings_doc --into docs/reference.md \
        --method-keys fedrouter_app/config/method_keys.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedrouter_app.markers import splice_file
from fedrouter_app.registry import method_config_class, method_names
from fedrouter_app.schema.settings import RunConfig

MARKER = "settings"
REQUIRED = "required"
# RunConfig.method holds the method's own dataclass: documented per method, not under RunConfig.
METHOD_KEY = "method"
# The fields of every registered method's config dataclass, as FieldSpec dicts (written by main's --method-keys).
METHOD_KEYS_FILE = Path(__file__).resolve().parent / "method_keys.json"


@dataclass(frozen=True)
class Row:
    """One configuration key."""

    key: str
    type: str
    default: str
    help: str


def type_name(annotation: Any) -> str:
    """A field's type in words: ``int``, ``list of str``, ``float or null``, ``any``."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return "any"
    if annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_name(item)}"
    if dataclasses.is_dataclass(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def nested_dataclass(annotation: Any) -> tuple[type | None, bool]:
    """The dataclass a field holds (directly, optionally or as a list of them), and whether it is a list."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return annotation, False
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found, is_list = nested_dataclass(arg)
            if found is not None:
                return found, is_list
    if origin is list:
        (item,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item):
            return item, True
    return None, False


def format_value(value: Any) -> str:
    """A default as it would be written in YAML: ``null``, ``true``, ``""``, ``[a, b]``, numbers as they are."""
    if isinstance(value, str):
        return json.dumps(value) if value != value.strip() or not value else value
    if isinstance(value, list | dict):
        return json.dumps(value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


_UNSET = object()


@dataclass(frozen=True)
class FieldSpec:
    """One field of a settings dataclass, as much as a :class:`Row` needs, in plain data (JSON-ready).

    Attributes
    ----------
    name : str
        The field's name.
    type : str
        Its type in words (:func:`type_name`; a nested dataclass by its class name).
    help : str
        The field's ``metadata["help"]``.
    default : str
        The dataclass default as written in YAML, or :data:`REQUIRED`.
    is_list : bool
        Whether the field holds a list of the nested dataclass.
    children : tuple of FieldSpec or None
        The nested dataclass's fields; None for a plain value.
    """

    name: str
    type: str
    help: str
    default: str
    is_list: bool = False
    children: tuple[FieldSpec, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (children nested)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "help": self.help, "default": self.default}
        if self.children is not None:
            out |= {"is_list": self.is_list, "children": [c.to_dict() for c in self.children]}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldSpec:
        """The spec :meth:`to_dict` wrote."""
        children = data.get("children")
        return cls(
            str(data["name"]),
            str(data["type"]),
            str(data["help"]),
            str(data["default"]),
            bool(data.get("is_list", False)),
            None if children is None else tuple(cls.from_dict(c) for c in children),
        )


def field_specs(cls: type) -> list[FieldSpec]:
    """The fields of dataclass ``cls``, nested dataclasses walked into."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        help_text = str(f.metadata.get("help", ""))
        inner, is_list = nested_dataclass(annotation)
        if inner is None:
            specs.append(FieldSpec(f.name, type_name(annotation), help_text, _default(f, _UNSET)))
            continue
        kind = f"list of {inner.__name__}" if is_list else type_name(annotation).replace("section", inner.__name__)
        children = tuple(field_specs(inner))
        specs.append(FieldSpec(f.name, kind, help_text, _default(f, _UNSET), is_list, children))
    return specs


def _lookup(values: Any, name: str) -> Any:
    if isinstance(values, dict) and name in values:
        return values[name]
    return _UNSET


def rows_of(cls: type, prefix: str = "", values: Any = None, skip: tuple[str, ...] = ()) -> list[Row]:
    """Rows of every field of dataclass ``cls`` (and of the dataclasses it nests), keys under ``prefix``.

    ``values`` is the unresolved config under ``prefix`` (a plain dict), the source of defaults.
    """
    return spec_rows(field_specs(cls), prefix, values, skip)


def spec_rows(
    specs: Sequence[FieldSpec], prefix: str = "", values: Any = None, skip: tuple[str, ...] = ()
) -> list[Row]:
    """:func:`rows_of` for fields given as :class:`FieldSpec` (read from :data:`METHOD_KEYS_FILE`, say)."""
    rows = []
    for spec in specs:
        if spec.name in skip:
            continue
        key = f"{prefix}{spec.name}"
        value = _lookup(values, spec.name)
        shown = spec.default if value is _UNSET else format_value(value)
        if spec.children is None:
            rows.append(Row(key, spec.type, shown, spec.help))
            continue
        # A section that conf/ fills has no value of its own to show; its keys below have theirs.
        rows.append(Row(key, spec.type, shown if spec.is_list or value is None else "", spec.help))
        if spec.is_list:
            # Defaults of a list's items are the dataclass's: conf/ gives whole lists, not one item's default.
            rows += spec_rows(spec.children, f"{key}[].")
        else:
            rows += spec_rows(spec.children, f"{key}.", value if isinstance(value, dict) else None)
    return rows


def _default(f: dataclasses.Field, value: Any) -> str:
    if value is not _UNSET:
        return format_value(value)
    if f.default is not MISSING:
        return format_value(f.default)
    if f.default_factory is not MISSING:
        return format_value(dataclasses.asdict(made) if dataclasses.is_dataclass(made := f.default_factory()) else made)
    return REQUIRED


def composed(overrides: list[str], resolve: bool = False) -> dict[str, Any]:
    """The composition of ``conf/`` with ``overrides`` as plain containers (interpolations kept unless ``resolve``)."""
    from fedrouter_app.config.compose import compose_config

    raw: DictConfig = compose_config(overrides)
    return OmegaConf.to_container(raw, resolve=resolve)  # type: ignore[return-value]


def run_rows() -> list[Row]:
    """Every key of :class:`RunConfig` except ``method.*`` (see :func:`method_rows`)."""
    return rows_of(RunConfig, values=composed([]), skip=(METHOD_KEY,))


def method_rows(name: str) -> list[Row]:
    """Every key of method ``name``'s config dataclass, with the defaults of ``conf/method/<name>.yaml``."""
    cls = method_config_class(name)
    return rows_of(cls, f"{METHOD_KEY}.", composed([f"method={name}"])[METHOD_KEY])


def method_keys_data() -> dict[str, Any]:
    """What :data:`METHOD_KEYS_FILE` holds: the fields of every registered method's config dataclass.

    Imports every method (and so torch); the lookups of :func:`stored_method_specs` then need none of it.
    """
    methods = {name: [spec.to_dict() for spec in field_specs(method_config_class(name))] for name in method_names()}
    return {
        "generated_by": (
            "python -m fedrouter_app.config.settings_doc --method-keys fedrouter_app/config/method_keys.json"
        ),
        "methods": methods,
    }


def method_keys_text() -> str:
    """:func:`method_keys_data` as the text of :data:`METHOD_KEYS_FILE`."""
    return json.dumps(method_keys_data(), indent=1, ensure_ascii=False) + "\n"


@lru_cache(maxsize=1)
def _stored_methods() -> dict[str, Any]:
    try:
        data = json.loads(METHOD_KEYS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    methods = data.get("methods") if isinstance(data, dict) else None
    return methods if isinstance(methods, dict) else {}


def stored_method_specs(name: str) -> list[FieldSpec] | None:
    """The fields of method ``name``'s config dataclass as :data:`METHOD_KEYS_FILE` stores them; None if absent."""
    stored = _stored_methods().get(name)
    if not isinstance(stored, list):
        return None
    try:
        return [FieldSpec.from_dict(item) for item in stored]
    except (KeyError, TypeError):
        return None


def all_rows() -> dict[str, list[Row]]:
    """Rows per table: ``run`` for RunConfig, then one entry per registered method."""
    return {"run": run_rows(), **{name: method_rows(name) for name in method_names()}}


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell (pipes, emphasis, HTML and line breaks escaped)."""
    text = " ".join(text.split())
    for raw, escaped in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(raw, escaped)
    return text


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def table(rows: list[Row]) -> str:
    """Rows as one Markdown table."""
    lines = ["| key | type | default | help |", "| --- | --- | --- | --- |"]
    for row in rows:
        default = row.default if row.default in ("", REQUIRED) else _code(row.default.replace("|", "\\|"))
        lines.append(f"| `{row.key}` | {_cell(row.type)} | {default} | {_cell(row.help)} |")
    return "\n".join(lines)


def render(tables: dict[str, list[Row]] | None = None) -> str:
    """The whole reference as Markdown: run settings by section, then one table per method."""
    tables = all_rows() if tables is None else tables
    run = tables["run"]
    out = ["## Run settings", ""]
    top = [r for r in run if "." not in r.key]
    out += ["### Top level", "", table(top), ""]
    sections = dict.fromkeys(r.key.split(".", 1)[0] for r in run if "." in r.key)
    for section in sections:
        head = next(r for r in run if r.key == section)
        out += [f"### {section}", "", _cell(head.help), ""]
        out += [table([r for r in run if r.key.startswith(f"{section}.")]), ""]
    out += [
        "## Method settings",
        "",
        "Keys under `method.` depend on the method (`method=<name>`); defaults are those of `conf/method/<name>.yaml`.",
        "",
    ]
    for name, rows in tables.items():
        if name == "run":
            continue
        cls = method_config_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"### {name}", "", _cell(doc), ""]
        out += [table(rows), ""]
    return "\n".join(out)


def check_help(cls: type = RunConfig) -> list[str]:
    """Keys of ``cls`` (nested dataclasses included) and of every method config that have no help text."""
    missing = []
    classes = [("", cls)] + [(f"{METHOD_KEY}.", method_config_class(n)) for n in method_names()]
    for prefix, owner in classes:
        for row in rows_of(owner, prefix):
            if not row.help.strip():
                missing.append(row.key)
    return sorted(set(missing))


def main(argv: list[str] | None = None) -> int:
    """Print the reference, or write it into a Markdown file and the method keys into their data file."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrouter_app.config.settings_doc", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--into", type=Path, help="Markdown file to put the tables into (between the markers)")
    parser.add_argument("--marker", default=MARKER, help=f"marker name (default: {MARKER})")
    parser.add_argument(
        "--method-keys",
        type=Path,
        metavar="JSON",
        help=f"also write the methods' keys that `fedrouter config` reads (fedrouter_app/{METHOD_KEYS_FILE.name})",
    )
    args = parser.parse_args(argv)
    if args.method_keys is not None:
        args.method_keys.write_text(method_keys_text(), encoding="utf-8")
    text = render() + "\n"
    if args.into is None:
        if args.method_keys is None:
            sys.stdout.write(text)
        return 0
    try:
        splice_file(args.into, args.marker, text)
    except ValueError as err:
        print(f"error: {args.into}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
