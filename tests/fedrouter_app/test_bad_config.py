"""Bad configuration fails at start with one line that says what is wrong (docs/robustness.md, bad-input table)."""

from __future__ import annotations

import pytest

from fedrouter_app.config import load_run_config
from fedrouter_app.settings import ConfigError
from tests.conftest import TINY


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=fedavgg"], "unknown method 'fedavgg'; valid choices: "),
        (["scenario=quad"], "unknown scenario 'quad'; valid choices: "),
        (["train.learning_rate=1"], "unknown config key 'train.learning_rate'; valid keys under 'train': "),
        (["method.n_local=40"], "method.n_local=40 exceeds the 32 training examples a client may hold"),
        (["method.n_global=9"], "method.n_global=9 exceeds the 8 local centroids the registration gives"),
        (["scenario.train_examples_per_client=0"], "must be >= scenario.min_train_examples"),
        (["scenario.min_train_examples=0"], "scenario.min_train_examples must be >= 1"),
        (["method.min_cluster_size=0"], "method.min_cluster_size must be >= 1"),
        (["method.centroid_noise=-1"], "method.centroid_noise must be >= 0"),
        (["dp.mode=loud"], "dp.mode must be one of off, server, client"),
        (["dp.clipping_norm=0"], "dp.clipping_norm must be > 0"),
        (["max_reply_bytes=-1"], "max_reply_bytes must be >= 0"),
        (["aggregation.rule=average"], "aggregation.rule must be one of mean, norm_clip, median"),
        (["aggregation.trim_fraction=0.5"], "aggregation.trim_fraction must be in [0, 0.5)"),
        (["dp.mode=server", "dp.noise_multiplier=1", "aggregation.rule=median"], "aggregation.rule must be mean"),
        (["dp.mode=server"], "adds no noise: no privacy at all"),
        (["method=fltac", "aggregation.rule=norm_clip"], "needs one starting adapter per aggregate"),
        (["data.prompt_format=alpaca"], "data.prompt_format must be one of plain, chat"),
        (["data.system_prompt=hi"], "data.system_prompt is used with data.prompt_format=chat only"),
    ],
)
def test_bad_input_gets_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_run_config([*TINY, *overrides])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_a_node_resolves_no_interpolation_the_server_sent(monkeypatch):
    from types import SimpleNamespace

    from fedrouter_app.client_handler import node_settings

    monkeypatch.setenv("NODE_SECRET", "do-not-leak")
    context = SimpleNamespace(
        run_config={"overrides": "data.tasks=[${oc.env:NODE_SECRET}]"},
        node_config={"partition-id": 0, "num-partitions": 8},
    )
    with pytest.raises(ConfigError) as info:
        node_settings(context, [])
    assert "nodes resolve none from the server" in str(info.value)
    assert "do-not-leak" not in str(info.value)
