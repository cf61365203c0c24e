"""Composing the run configuration from ``conf/`` with Hydra.

Flower passes ``--run-config`` as flat keys and ``overrides`` (Hydra override
syntax); :mod:`fedrouter_app.config.run_config` turns them into Hydra overrides.
:func:`load_run_config` composes those into a typed
:class:`~fedrouter_app.schema.settings.RunConfig`, or raises
:class:`~fedrouter_app.schema.settings.ConfigError` with one line saying what is wrong
and what the valid choices are.

``num_clients`` follows the federation unless it is set: ``conf/config.yaml``
gives it as ``${federation_size:8}``, which the server replaces by the number
of nodes it finds and clients by the number the server sends them
(``federation_size`` of :func:`load_run_config`); 8 where no federation is
known (composing a config on its own, ``simulate``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedrouter_app.config.run_config import hydra_overrides, naming_flat_keys_in, overrides_from_run_config
from fedrouter_app.method_packages import part_dir
from fedrouter_app.registry import method_config_class
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.metadata import NEUTRAL
from fedrouter_app.schema.settings import SECTIONS, RunConfig

__all__ = [
    "ConfigError",
    "RunConfig",
    "config_fingerprint",
    "follows_federation",
    "load_run_config",
    "overrides_from_run_config",
]

OmegaConf.register_new_resolver("len", lambda value: len(value), replace=True)


def _n_training_tasks(*, _root_: DictConfig) -> int:
    """Tasks some client trains on: ``data.tasks`` minus ``scenario.unseen_tasks``, and of those, in a window
    scenario with fewer clients than tasks, only the ones the clients' windows reach."""
    held_out = set(_root_.scenario.get("unseen_tasks") or [])
    n = sum(1 for task in _root_.data.tasks if task not in held_out)
    if _root_.scenario.get("kind") != "window" or OmegaConf.is_interpolation(_root_.scenario, "tasks_per_client"):
        return n  # every task is dealt out (dirichlet), or the window is itself "every task" (iid)
    per_client = _root_.scenario.get("tasks_per_client")
    windows = -(-int(_root_.num_clients) // int(_root_.scenario.get("clients_per_window") or 1))
    return n if per_client is None else min(n, windows + int(per_client) - 1)


# ${n_training_tasks:} in conf/: e.g. one global cluster per task that is trained on.
OmegaConf.register_new_resolver("n_training_tasks", _n_training_tasks, replace=True)


def _tasks_per_client(default: int, *, _root_: DictConfig) -> int:
    """``scenario.tasks_per_client`` where the scenario fixes it (window scenarios), else ``default``."""
    value = _root_.scenario.get("tasks_per_client")
    return int(value) if value is not None else int(default)


# ${tasks_per_client:2} in conf/: e.g. one local cluster per task a client holds (FedRouter's n_local).
OmegaConf.register_new_resolver("tasks_per_client", _tasks_per_client, replace=True)

FEDERATION_SIZE = "federation_size"
# ${federation_size:8} in conf/config.yaml: num_clients when nothing sets it. The value is the default; the server
# and clients put the federation's size in its place before resolving (see load_run_config).
OmegaConf.register_new_resolver(FEDERATION_SIZE, lambda default: int(default), replace=True)

CONF_DIR = part_dir("conf")
GROUPS = ("method", "scenario", "model", "data")


def load_run_config(overrides: Sequence[str] = (), federation_size: int | None = None) -> RunConfig:
    """Compose ``conf/`` with Hydra ``overrides`` and validate the result (cached).

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides.
    federation_size : int, optional
        The number of nodes (clients) of the federation: ``num_clients`` when
        neither the overrides nor a preset they pick set it.
    """
    return _load_cached(tuple(overrides), federation_size)


def follows_federation(overrides: Sequence[str]) -> bool:
    """Whether ``num_clients`` is left to the federation's size (nothing in ``overrides`` or their presets sets it)."""
    return _follows_federation(compose_config(overrides))


def _follows_federation(raw: DictConfig) -> bool:
    node = raw._get_node("num_clients")
    value = node._value() if node is not None else None
    return isinstance(value, str) and value.replace(" ", "").startswith("${" + FEDERATION_SIZE + ":")


@lru_cache(maxsize=8)
def _load_cached(overrides: tuple[str, ...], federation_size: int | None) -> RunConfig:
    raw = compose_config(overrides)
    if federation_size is not None and _follows_federation(raw):
        raw.num_clients = federation_size
    try:
        return build_run_config(raw)
    except ConfigError as err:
        raise naming_flat_keys_in(err, overrides) from None


def neutral_settings(cfg: RunConfig) -> dict[tuple[str, str], Any]:
    """``(section, key) -> value`` of every setting that declares a fingerprint-neutral value (its field's metadata
    under :data:`~fedrouter_app.schema.metadata.NEUTRAL`), the run's own method's settings included."""
    neutral = {}
    for section in fields(cfg):
        settings = getattr(cfg, section.name)
        if is_dataclass(settings):
            for setting in fields(settings):
                if NEUTRAL in setting.metadata:
                    neutral[(section.name, setting.name)] = setting.metadata[NEUTRAL]
    return neutral


def _as_recorded_before(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings whose neutral value depends on another setting, written as fingerprints recorded them before.

    ``model.precision=auto`` is what ``model.dtype=float32`` with ``model.autocast=auto`` was; ``scenario.claims``
    selects test tasks only under ``eval.scope=claims``; ``data.wheels_dir`` is read by the packaged source only.
    """
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    model, scenario, data = settings.get("model", {}), settings.get("scenario", {}), settings.get("data", {})
    if model.get("precision") == "auto":
        del model["precision"]
        model.update(dtype="float32", autocast="auto")
    if settings.get("eval", {}).get("scope") != "claims":
        scenario.pop("claims", None)
    if data.get("source") != "packaged" and not data.get("wheels_dir"):
        data.pop("wheels_dir", None)
    return settings


def config_fingerprint(cfg: RunConfig) -> str:
    """Hash of everything server and clients must agree on (outputs, checkpointing and the report's declaration
    excluded: none of them changes what a run computes)."""
    settings = _as_recorded_before(
        {k: v for k, v in cfg.to_dict().items() if k not in ("output", "checkpoint", "report")}
    )
    for (section, key), neutral in neutral_settings(cfg).items():
        if section in settings and settings[section].get(key, neutral) == neutral:
            settings[section] = {k: v for k, v in settings[section].items() if k != key}
    # A section added whole after fingerprints were recorded, at its neutral values, is not there at all.
    settings = {k: v for k, v in settings.items() if v != {}}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Compose the raw Hydra config, turning Hydra's errors into one-line ones.

    Flat run-config keys (``num-server-rounds=3``) are taken as their Hydra
    keys (:func:`~fedrouter_app.config.run_config.hydra_overrides`).
    """
    overrides = hydra_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain_compose_error(err, overrides)) from None
    finally:
        GlobalHydra.instance().clear()


def build_run_config(raw: DictConfig) -> RunConfig:
    """Type-check and validate a composed config; return it as dataclasses."""
    raw = raw.copy()
    try:
        OmegaConf.resolve(raw)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config key '{getattr(err, 'full_key', '')}': {str(err).splitlines()[0]}") from None
    OmegaConf.set_struct(raw, False)
    method_raw = raw.pop("method", None)
    if method_raw is None or "name" not in method_raw:
        raise ConfigError("the method config has no 'name'; pick a method with method=<name>")
    try:
        method_cls = method_config_class(str(method_raw.name))
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    method = _typed(method_cls, method_raw, "method")
    raw.method = {}
    cfg = _typed(RunConfig, raw, "")
    cfg.method = method
    # Here, not at the top: the data sources import numpy and torch, which a settings lookup has no use for.
    from fedrouter_app.data.sources import check_names

    try:
        check_names(cfg.data)
        cfg.validate()
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cfg


def _typed(cls: type, raw: Any, prefix: str) -> Any:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), raw))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        where = ".".join(p for p in (prefix, key) if p)
        reason = str(err).splitlines()[0]
        if " not in " in reason:
            parent = where.rsplit(".", 1)[0] if "." in where else ""
            owner = SECTIONS.get(parent.rsplit(".", 1)[-1], cls if not parent or parent == prefix else None)
            if owner is not None:
                reason = f"unknown key; valid keys{f' under {parent!r}' if parent else ''}: "
                reason += ", ".join(f.name for f in fields(owner))
        raise ConfigError(f"config key '{where}': {reason}") from None


def _explain_compose_error(err: Exception, overrides: Sequence[str]) -> str:
    text = str(err)
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if missing:
        group, choice = missing.groups()
        return f"unknown {group} {choice!r}; valid choices: {', '.join(available_choices(group))}"
    bad_key = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        under = f" under {parent!r}" if parent else ""
        return f"unknown config key '{key}'; valid keys{under}: {', '.join(_keys_under(parent, overrides))}"
    return " ".join(text.split())


def _keys_under(parent: str, overrides: Sequence[str]) -> list[str]:
    groups_only = [o for o in overrides if "=" in o and o.split("=", 1)[0] in GROUPS]
    node: Any = compose_config(groups_only)
    for part in filter(None, parent.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def available_choices(group: str) -> list[str]:
    """Options of a config group (the YAML files under ``conf/<group>/``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
