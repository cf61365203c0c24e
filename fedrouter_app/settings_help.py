"""Every setting of a run, with its type, default and help, read from the settings dataclasses.

The help text is the ``metadata={"help": ...}`` of each field of
:mod:`fedrouter_app.settings` and of the method's own dataclass; the defaults
are those ``conf/`` composes to (with the given overrides). ``fedrouter
config`` prints them; ``docs/configuration.md`` shows the flat run-config keys
as :func:`flat_keys_markdown` writes them.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from typing import Any

from fedrouter_app.config import load_run_config
from fedrouter_app.registry import method_config_class
from fedrouter_app.run_config import FLAT_KEYS, OVERRIDES
from fedrouter_app.settings import RunConfig

_FLAT_OF = {key.hydra_key: key.name for key in FLAT_KEYS}


@dataclass(frozen=True)
class SettingHelp:
    """One key of the run configuration."""

    key: str  # dotted, as in a Hydra override; items of a list of tables as data.tables[].path
    type: str
    default: Any
    help: str
    flat_key: str = ""  # the run-config key that sets it too, if any

    def describe(self) -> str:
        """Two lines: key, type, default (and flat key); then the help, indented."""
        flat = f"; run config: {self.flat_key}" if self.flat_key else ""
        return f"{self.key} ({self.type}, default {self.default!r}{flat})\n    {self.help}"


def settings_help(overrides: Sequence[str] = ()) -> list[SettingHelp]:
    """Every leaf setting of the config ``overrides`` compose to (the method's own included), in schema order."""
    cfg = load_run_config(list(overrides))
    return list(_walk(RunConfig, cfg, "", method_cls=method_config_class(cfg.method.name)))


def _walk(cls: type, value: Any, prefix: str, method_cls: type | None = None) -> Iterator[SettingHelp]:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        current = getattr(value, f.name, None) if value is not None else None
        kind = hints[f.name] if not (f.name == "method" and method_cls) else method_cls
        nested = _dataclass_in(kind)
        if nested is not None and not _is_list(kind):
            yield from _walk(nested, current, f"{key}.")
        elif nested is not None:
            yield SettingHelp(key, _type_name(kind), f"{len(current or [])} item(s)", f.metadata.get("help", ""))
            yield from _walk(nested, None, f"{key}[].")
        else:
            default = current if value is not None else _field_default(f)
            yield SettingHelp(key, _type_name(kind), default, _help(f, key), _FLAT_OF.get(key, ""))


def _help(f: Field, key: str) -> str:
    if key == "method.name":
        return "The method: a file of conf/method/ (pick it with method=<name>)."
    return str(f.metadata.get("help", ""))


def _field_default(f: Field) -> Any:
    """The dataclass's own default (items of a list have no value in conf/ to show)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return "(required)"


def _dataclass_in(kind: Any) -> type | None:
    """The dataclass ``kind`` is, or is an optional of, or a list of; None otherwise."""
    if isinstance(kind, type) and is_dataclass(kind):
        return kind
    for arg in typing.get_args(kind):
        if isinstance(arg, type) and is_dataclass(arg):
            return arg
    return None


def _is_list(kind: Any) -> bool:
    return typing.get_origin(kind) is list


def _type_name(kind: Any) -> str:
    if kind is Any:
        return "any"
    if isinstance(kind, type) and typing.get_origin(kind) is None:
        return kind.__name__
    # typing.Optional[pkg.mod.Table] reads as "Table | None".
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(kind)).replace("NoneType", "None")


def find_setting(key: str, overrides: Sequence[str] = ()) -> list[SettingHelp]:
    """The settings named ``key`` (a Hydra key or a flat run-config key), or under it (a section)."""
    hydra_key = next((k.hydra_key for k in FLAT_KEYS if k.name == key), key)
    every = settings_help(overrides)
    exact = [s for s in every if s.key == hydra_key]
    return exact or [s for s in every if s.key.startswith(hydra_key + ".") or s.key.startswith(hydra_key + "[]")]


def _group_defaults() -> dict[str, str]:
    """The option ``conf/config.yaml`` picks in each config group."""
    from omegaconf import OmegaConf

    from fedrouter_app.config import CONF_DIR

    entries = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    return {k: str(v) for entry in entries if isinstance(entry, dict) for k, v in entry.items()}


def flat_keys_markdown() -> str:
    """The flat run-config keys as a Markdown table: key, what it sets, default and help."""
    by_key = {s.key: s for s in settings_help()}
    rows = ["| Run config key | Sets | Default in `conf/` | Meaning |", "|---|---|---|---|"]
    for key in FLAT_KEYS:
        setting = by_key.get(key.hydra_key)
        if setting is None:  # a config group: its default is the option conf/config.yaml picks
            default = _group_defaults()[key.hydra_key]
            meaning = f"Config group: a file of `conf/{key.hydra_key}/`."
        else:
            default, meaning = setting.default, setting.help
        shown = f"`{default}`" if default != "" else "empty"
        rows.append(f"| `{key.name}` | `{key.hydra_key}` | {shown} | {meaning} |")
    rows.append(f"| `{OVERRIDES}` | anything else | | Hydra overrides, e.g. `'train.lr_min=0 eval.every=2'`. |")
    return "\n".join(rows) + "\n"
