"""Flower's run config (``flwr run --run-config``) as Hydra overrides.

``[tool.flwr.app.config]`` in ``pyproject.toml`` declares the settings users
change most as flat keys (``num-server-rounds``, ``lr``, ...); each stands for
one Hydra key of ``conf/`` (:data:`FLAT_KEYS`) and ``overrides`` carries the
rest in Hydra's override syntax. Every flat key is declared with an empty
string, which means "not set": ``conf/`` (and a preset picked in
``overrides``) keep their value. A set key becomes one Hydra override, so it is
checked exactly as that key is, and an error names the flat key too
(:func:`naming_flat_keys`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedrouter_app.schema.checks import ConfigError

OVERRIDES = "overrides"


@dataclass(frozen=True)
class FlatKey:
    """A run-config key and the Hydra key it sets."""

    name: str
    hydra_key: str
    kind: str  # the TOML type users give: "string", "int" or "float" (ints are accepted for floats)
    example: str


# Config groups first: Hydra needs them before the keys they hold, as on a command line.
FLAT_KEYS: tuple[FlatKey, ...] = (
    FlatKey("method", "method", "string", "method='fedit'"),
    FlatKey("scenario", "scenario", "string", "scenario='unseen'"),
    FlatKey("model", "model", "string", "model='smollm2'"),
    FlatKey("data", "data", "string", "data='bigbench'"),
    FlatKey("num-server-rounds", "num_rounds", "int", "num-server-rounds=5"),
    FlatKey("num-clients", "num_clients", "int", "num-clients=8"),
    FlatKey("fraction-train", "fraction_train", "float", "fraction-train=0.5"),
    FlatKey("fraction-evaluate", "fraction_evaluate", "float", "fraction-evaluate=0.5"),
    FlatKey("local-steps", "train.local_steps", "int", "local-steps=10"),
    FlatKey("batch-size", "train.batch_size", "int", "batch-size=8"),
    FlatKey("lr", "train.lr", "float", "lr=0.001"),
    FlatKey("lora-r", "lora.r", "int", "lora-r=16"),
    FlatKey("seed", "seed", "int", "seed=1"),
    FlatKey("run-name", "output.run_name", "string", "run-name='trial'"),
)
BY_NAME: dict[str, FlatKey] = {key.name: key for key in FLAT_KEYS}
# Hydra values that need no quotes; anything else (spaces, brackets, commas) is quoted.
_PLAIN = re.compile(r"^[\w.:/+-]+$")


def is_set(value: Any) -> bool:
    """A flat key counts as given unless it holds the empty string it is declared with."""
    return not (isinstance(value, str) and value == "")


def hydra_value(key: FlatKey, value: Any) -> str:
    """``value`` (a TOML scalar) as a Hydra override value, after checking its TOML type.

    Raises
    ------
    ConfigError
        When the value's type does not fit the key (e.g. a string for an int key).
    """
    fits = {
        "string": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
    }[key.kind]
    if not fits:
        raise ConfigError(
            f"run config key '{key.name}' ({key.hydra_key}) must be {'a' if key.kind != 'int' else 'an'} {key.kind}, "
            f"got {value!r}; e.g. {key.example}"
        )
    text = repr(float(value)) if key.kind == "float" else str(value)
    return text if _PLAIN.match(text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def overridden_key(override: str) -> str:
    """The key a Hydra override sets: ``+train.lr=1`` and ``~train.lr`` both give ``train.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Hydra overrides from Flower's run config: the flat keys that are set, then ``overrides``.

    Raises
    ------
    ConfigError
        For an unknown key, a value of the wrong type, ``overrides`` that do
        not parse, or a Hydra key given both as a flat key and in ``overrides``.
    """
    unknown = sorted(k for k in run_config if k != OVERRIDES and k not in BY_NAME)
    if unknown:
        valid = ", ".join([*BY_NAME, OVERRIDES])
        raise ConfigError(f"unknown run config key(s) {', '.join(map(repr, unknown))}; valid keys: {valid}")
    flat = [f"{key.hydra_key}={hydra_value(key, run_config[key.name])}" for key in given_keys(run_config)]
    extra = str(run_config.get(OVERRIDES, "") or "")
    try:
        rest = shlex.split(extra)
    except ValueError as err:
        raise ConfigError(f"cannot parse overrides {extra!r}: {err}") from None
    by_hydra_key = {key.hydra_key: key.name for key in given_keys(run_config)}
    for override in rest:
        name = by_hydra_key.get(overridden_key(override))
        if name is not None:
            raise ConfigError(
                f"{overridden_key(override)} is given twice: as run config key '{name}' and in overrides "
                f"({override!r}); give it once"
            )
    return [*flat, *rest]


def given_keys(run_config: Mapping[str, Any]) -> list[FlatKey]:
    """The flat keys ``run_config`` sets, in :data:`FLAT_KEYS` order."""
    return [key for key in FLAT_KEYS if key.name in run_config and is_set(run_config[key.name])]


def naming_flat_keys(err: ConfigError, run_config: Mapping[str, Any]) -> ConfigError:
    """``err`` with the flat key in front when it is about the Hydra key of a flat key that was given.

    The checks of ``conf/`` speak of Hydra keys (``num_rounds must be >= 1``);
    a user who wrote ``num-server-rounds=0`` reads ``run config key
    'num-server-rounds' (num_rounds=0): num_rounds must be >= 1, got 0``.
    """
    message = str(err)
    for key in given_keys(run_config):
        # The key itself, not a longer one it starts (train.lr in train.lr_min) or a key under it (method.mu).
        if re.search(rf"(?<![\w.]){re.escape(key.hydra_key)}(?![\w.])", message):
            if message.startswith("run config key"):
                return err  # already about the flat key (its type)
            return type(err)(f"run config key '{key.name}' ({key.hydra_key}={run_config[key.name]!r}): {message}")
    return err


def hydra_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides with every flat run-config key (``num-server-rounds=3``, ``lr=0.001``) as its Hydra key.

    One name per setting: whatever takes Hydra overrides (``fedrouter run``,
    ``simulate``, sweeps) also takes the flat keys ``flwr run --run-config``
    takes, so a setting learnt in one place works in every other. Sweeps keep
    their comma lists (``lr=0.001,0.003``); an override prefix (``+``, ``~``,
    ``++``) is kept.
    """
    out = []
    for override in overrides:
        key = overridden_key(override)
        flat = BY_NAME.get(key)
        if flat is None or flat.hydra_key == key or "=" not in override:
            out.append(override)
            continue
        prefix = override[: len(override) - len(override.lstrip("+~"))]
        out.append(f"{prefix}{flat.hydra_key}={override.split('=', 1)[1]}")
    return out


def naming_flat_keys_in(err: ConfigError, overrides: Sequence[str]) -> ConfigError:
    """:func:`naming_flat_keys` for flat keys given as overrides (``num-server-rounds=0`` on a command line)."""
    given = {}
    for override in overrides:
        flat = BY_NAME.get(overridden_key(override))
        if flat is not None and flat.hydra_key != flat.name and "=" in override:
            given[flat.name] = override.split("=", 1)[1]
    return naming_flat_keys(err, given) if given else err


def pyproject_table() -> str:
    """The ``[tool.flwr.app.config]`` table these keys need (what ``pyproject.toml`` holds)."""
    lines = [f'{key.name} = ""' for key in FLAT_KEYS]
    return "\n".join(["[tool.flwr.app.config]", *lines, f'{OVERRIDES} = ""'])
