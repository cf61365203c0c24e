"""Every setting of a run, with its type, default and help, read from the settings dataclasses.

The help text is the ``metadata={"help": ...}`` of each field of
:mod:`fedrouter_app.settings` and of the method's own dataclass; the defaults
are those ``conf/`` composes to (with the given overrides). ``fedrouter
config`` prints them; ``docs/configuration.md`` shows the flat run-config keys
as :func:`flat_keys_markdown` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedrouter_app.registry import method_config_class
from fedrouter_app.run_config import FLAT_KEYS, OVERRIDES
from fedrouter_app.settings import RunConfig
from fedrouter_app.settings_doc import METHOD_KEY, composed, rows_of

_FLAT_OF = {key.hydra_key: key.name for key in FLAT_KEYS}


@dataclass(frozen=True)
class SettingHelp:
    """One key of the run configuration."""

    key: str  # dotted, as in a Hydra override; items of a list of tables as data.tables[].path
    type: str
    default: str  # as written in YAML
    help: str
    flat_key: str = ""  # the run-config key that sets it too, if any

    def describe(self) -> str:
        """Two lines: key, type, default (and flat key); then the help, indented."""
        flat = f"; run config: {self.flat_key}" if self.flat_key else ""
        return f"{self.key} ({self.type}, default {self.default}{flat})\n    {self.help}"


def settings_help(overrides: Sequence[str] = ()) -> list[SettingHelp]:
    """Every setting of the config ``overrides`` compose to (the method's own included), in schema order."""
    values = composed(list(overrides), resolve=True)
    method = values[METHOD_KEY]
    rows = rows_of(RunConfig, values=values, skip=(METHOD_KEY,))
    rows += rows_of(method_config_class(str(method["name"])), f"{METHOD_KEY}.", method)
    return [SettingHelp(r.key, r.type, r.default, r.help, _FLAT_OF.get(r.key, "")) for r in rows]


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
    groups = _group_defaults()
    rows = ["| Run config key | Sets | Default in `conf/` | Meaning |", "|---|---|---|---|"]
    for key in FLAT_KEYS:
        setting = by_key.get(key.hydra_key)
        if key.hydra_key in groups or setting is None:  # a config group: the option conf/config.yaml picks
            default = groups[key.hydra_key]
            meaning = f"Config group: a file of `conf/{key.hydra_key}/`."
        else:
            default, meaning = setting.default, setting.help
        shown = f"`{default}`" if default not in ("", '""') else "empty"
        rows.append(f"| `{key.name}` | `{key.hydra_key}` | {shown} | {meaning} |")
    rows.append(f"| `{OVERRIDES}` | anything else | | Hydra overrides, e.g. `'train.lr_min=0 eval.every=2'`. |")
    return "\n".join(rows) + "\n"
