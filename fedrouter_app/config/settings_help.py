"""Every setting of a run, with its type, default and help, read from the settings dataclasses.

The help text is the ``metadata={"help": ...}`` of each field of
:mod:`fedrouter_app.schema.settings` and of the method's own dataclass; the defaults
are those ``conf/`` composes to (with the given overrides). ``fedrouter
config`` prints them; ``docs/configuration.md`` shows the flat run-config keys
as :func:`flat_keys_markdown` writes them.

A lookup composes ``conf/`` with Hydra but imports no method: the fields of a
method's dataclass come from :data:`~fedrouter_app.config.settings_doc.METHOD_KEYS_FILE`
(the methods' modules pull torch, transformers and Flower, seconds of start-up
for a one-line answer), unless that file lacks a key ``conf/`` sets.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedrouter_app.config.run_config import FLAT_KEYS, OVERRIDES
from fedrouter_app.config.settings_doc import (
    METHOD_KEY,
    FieldSpec,
    composed,
    field_specs,
    rows_of,
    spec_rows,
    stored_method_specs,
)
from fedrouter_app.schema.settings import RunConfig

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
    rows += spec_rows(_method_specs(str(method["name"]), method), f"{METHOD_KEY}.", method)
    return [SettingHelp(r.key, r.type, r.default, r.help, _FLAT_OF.get(r.key, "")) for r in rows]


def _method_specs(name: str, values: dict[str, Any]) -> list[FieldSpec]:
    """The fields of method ``name``'s config: stored ones when they cover every key ``conf/`` sets."""
    stored = stored_method_specs(name)
    if stored is not None and set(values) <= {spec.name for spec in stored}:
        return stored
    # A method added or changed since the stored keys were written: ask the method itself (imports torch).
    from fedrouter_app.registry import method_config_class

    return field_specs(method_config_class(name))


def flat_key(name: str) -> str | None:
    """The Hydra key the flat run-config key ``name`` sets (``num-server-rounds``, or ``num_server_rounds``)."""
    for key in FLAT_KEYS:
        if name in (key.name, key.name.replace("-", "_")) and name != key.hydra_key:
            return key.hydra_key
    return None


def find_setting(key: str, overrides: Sequence[str] = ()) -> list[SettingHelp]:
    """The settings named ``key`` (a Hydra key or a flat run-config key), or under it (a section)."""
    return select(settings_help(overrides), key)


def select(every: Sequence[SettingHelp], key: str) -> list[SettingHelp]:
    """The settings of ``every`` named ``key`` (a Hydra key or a flat run-config key), or under it (a section)."""
    hydra_key = flat_key(key) or key
    exact = [s for s in every if s.key == hydra_key]
    return exact or [s for s in every if s.key.startswith(hydra_key + ".") or s.key.startswith(hydra_key + "[]")]


# Words users reach for, as the name this project gives the same thing (the last part of a key).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "learningrate": ("lr",),
    "step_size": ("lr",),
    "min_lr": ("lr_min",),
    "final_lr": ("lr_min",),
    "scheduler": ("lr_schedule",),
    "schedule": ("lr_schedule", "schedule"),
    "rounds": ("num_rounds",),
    "server_rounds": ("num_rounds",),
    "num_server_rounds": ("num_rounds",),
    "n_rounds": ("num_rounds",),
    "epochs": ("local_steps", "num_rounds"),
    "num_epochs": ("local_steps", "num_rounds"),
    "local_epochs": ("local_steps",),
    "steps": ("local_steps",),
    "num_steps": ("local_steps",),
    "iterations": ("local_steps",),
    "batch": ("batch_size",),
    "bs": ("batch_size",),
    "batchsize": ("batch_size",),
    "clients": ("num_clients",),
    "n_clients": ("num_clients",),
    "nodes": ("num_clients",),
    "num_nodes": ("num_clients",),
    "supernodes": ("num_clients",),
    "rank": ("r",),
    "lora_rank": ("r",),
    "lora_r": ("r",),
    "lora_alpha": ("alpha",),
    "lora_dropout": ("dropout",),
    "wd": ("weight_decay",),
    "decay": ("weight_decay",),
    "clip": ("max_grad_norm", "clipping_norm", "clip_norm"),
    "grad_clip": ("max_grad_norm",),
    "clip_grad": ("max_grad_norm",),
    "gradient_clipping": ("max_grad_norm",),
    "random_seed": ("seed",),
    "rng": ("seed",),
    "output_dir": ("dir",),
    "out_dir": ("dir",),
    "outdir": ("dir",),
    "model_name": ("name",),
    "max_len": ("max_length",),
    "seq_len": ("max_length",),
    "max_seq_length": ("max_length",),
    "context_length": ("max_length",),
    "max_tokens": ("max_new_tokens",),
    "gen_len": ("max_new_tokens",),
    "clusters": ("n_global", "n_local"),
    "num_clusters": ("n_global", "n_local"),
    "k": ("n_global", "n_local"),
    "sigma": ("noise_multiplier", "centroid_noise"),
    "noise": ("noise_multiplier", "centroid_noise"),
    "epsilon": ("noise_multiplier", "delta"),
    "eval_every": ("every",),
    "evaluate_every": ("every",),
    "checkpoint_every": ("every",),
    "resume_from": ("resume",),
    "tasks": ("tasks", "tasks_per_client"),
    "fraction": ("fraction_train", "fraction"),
    "participation": ("fraction_train", "fraction_evaluate"),
    "gpu": ("device",),
    "cuda": ("device",),
    "dtype": ("precision",),
    "fp16": ("precision",),
    "bf16": ("precision",),
}
# Words too common in help texts to say anything about which key is meant.
_STOP_WORDS = frozenset({"a", "an", "and", "for", "in", "num", "of", "on", "or", "per", "the", "to"})


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def suggest(key: str, settings: Sequence[SettingHelp], n: int = 3) -> list[str]:
    """The keys of ``settings`` a user who typed the unknown ``key`` most likely meant, best first.

    Keys are matched by spelling (the whole key, and its last part against
    each key's last part), by meaning (:data:`SYNONYMS`: ``learning_rate``
    finds ``train.lr``) and by the words of each key's help text
    (``train.learning_rate`` finds the keys whose help speaks of a learning
    rate). A key in the section ``key`` names is preferred.
    """
    wanted = key.strip().lower().replace("-", "_")
    section, _, last = wanted.rpartition(".")
    last = last.removesuffix("[]")
    query_words = [w for w in _words(last) if w not in _STOP_WORDS]
    # A synonym of the whole last part ranks above one of a word in it, and earlier ones above later ones.
    meant: dict[str, float] = {}
    for words, top in ((SYNONYMS.get(last, ()), 0.94), *((SYNONYMS.get(w, ()), 0.9) for w in query_words)):
        for rank, synonym in enumerate(words):
            meant[synonym] = max(meant.get(synonym, 0.0), top - 0.01 * rank)
    scores: dict[str, float] = {}
    for setting in settings:
        name = setting.key
        own_section, _, own_last = name.rpartition(".")
        own_last = own_last.removesuffix("[]")
        if name == section:
            continue  # the section the user already named is no answer
        score = max(
            difflib.SequenceMatcher(None, wanted, name.lower()).ratio(),
            0.95 * difflib.SequenceMatcher(None, last, own_last).ratio(),
            meant.get(own_last, 0.0),
        )
        text = set(_words(f"{name} {setting.help}"))
        covered = sum(w in text for w in query_words) / len(query_words) if query_words else 0.0
        if len(query_words) > 1:
            # Every word of a two-word query in a key's help beats a near spelling of a longer key.
            score = max(score, 0.8 * covered)
        # Ties go to the key whose name and help use the user's words (eval_batch: eval.batch_size).
        score += 0.04 * covered
        if section and own_section.removesuffix("[]") == section:
            score += 0.05
        scores[name] = score
    ranked = sorted((s for s in scores.items() if s[1] >= 0.7), key=lambda item: -item[1])
    return [name for name, _ in ranked[:n]]


def _group_defaults() -> dict[str, str]:
    """The option ``conf/config.yaml`` picks in each config group."""
    from omegaconf import OmegaConf

    from fedrouter_app.config.compose import CONF_DIR

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
