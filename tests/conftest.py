"""Shared fixtures: an isolated cache and output directory, tiny configs, the model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# Set before anything reads them: Hydra resolves the output dir at compose time,
# and Ray workers inherit the environment of the process that starts Ray.
_ROOT = Path(os.environ.get("PYTEST_FEDROUTER_TMP", "/tmp")) / f"fedrouter-tests-{os.getpid()}"
os.environ.setdefault("FEDROUTER_CACHE", str(_ROOT / "cache"))
os.environ["FEDROUTER_OUTPUT_DIR"] = str(_ROOT / "outputs")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# No test touches the network: outbound connections are refused here and, through sitecustomize on PYTHONPATH, in
# the Python processes tests start (loopback and this host's own addresses stay open for Flower and Ray).
_GUARD_DIR = Path(__file__).parent / "no_network"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_GUARD_DIR), os.environ.get("PYTHONPATH")]))
os.environ["PIP_NO_INDEX"] = "1"

from tests.no_network import sitecustomize as network_guard  # noqa: E402

os.environ[network_guard.ENV] = "1"
network_guard.install()

from fedrouter_app.config.compose import load_run_config  # noqa: E402
from fedrouter_app.federation.exchange import RoundRecord  # noqa: E402
from fedrouter_app.model.loading import AdapterModel, cached_adapter_model  # noqa: E402
from fedrouter_app.schema.settings import RunConfig  # noqa: E402

# Small enough for unit tests, large enough for every code path.
TINY = (
    "num_clients=4",
    "num_rounds=2",
    "train.local_steps=4",
    "train.batch_size=8",
    "scenario.train_examples_per_client=32",
    "scenario.test_examples_per_task=4",
)


@pytest.fixture(scope="session", autouse=True)
def _clean_tmp() -> Iterator[None]:
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """Fail the test that tried to reach another host, even where the code under test swallowed the error."""
    before = len(network_guard.attempts)
    yield
    tried = network_guard.attempts[before:]
    if tried:
        pytest.fail(f"the test tried to use the network ({', '.join(dict.fromkeys(tried))}); tests must run offline")


@pytest.fixture(scope="session")
def make_cfg() -> Callable[..., RunConfig]:
    """``make_cfg("method=local", ...)``: the tiny config plus overrides."""

    def make(*overrides: str) -> RunConfig:
        return load_run_config([*TINY, *overrides])

    return make


@pytest.fixture(scope="session")
def cfg(make_cfg: Callable[..., RunConfig]) -> RunConfig:
    return make_cfg()


@pytest.fixture(scope="session")
def adapter_model(cfg: RunConfig) -> AdapterModel:
    """The process's cached embedded model (built once per test session)."""
    return cached_adapter_model(cfg.model, cfg.lora)


def tiny_overrides(*extra: str) -> Sequence[str]:
    return [*TINY, *extra]


class Keep:
    """A loop callback that keeps every round's record, for tests that read what the loop recorded."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_run_start(self, *args: object) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        self.records.append(record)

    def on_run_end(self, *args: object) -> None:
        pass
