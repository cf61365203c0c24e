"""Every FedRouter variant runs a whole (small) federation through the real ServerApp code."""

import pytest

from fedrouter_app.runners.inprocess import run_inprocess

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

BASE = [
    "num_clients=4",
    "num_rounds=3",
    "train.local_steps=3",
    "train.batch_size=8",
    "scenario=dual",
    "scenario.train_examples_per_client=32",
    "scenario.test_examples_per_task=4",
    "data.tasks=[copy,reverse,capital,sentiment]",
    "method=fedrouter",
    "method.n_global=4",
]


@pytest.mark.parametrize(
    "variant",
    [
        ["method.clustering=oracle"],
        ["method.recluster_every=2", "fraction_train=0.5"],
        ["method.schedule=all", "method.weighting=uniform", "method.router=local"],
        ["method.weighting=client_size", "fraction_evaluate=0.5", "eval.every=2"],
    ],
    ids=["oracle", "recluster-partial", "all-uniform-local", "client-size-sampled-eval"],
)
def test_variant_completes(variant):
    results, run_dir, _ = run_inprocess([*BASE, *variant], 4)
    assert results["run"]["status"] == "completed"
    assert (run_dir / "adapters" / "cluster-3" / "adapter_model.safetensors").exists()
    if "method.recluster_every=2" in variant:
        assert "reclustered" in results["rounds"][2]["strategy"]["train"]
    if "method.clustering=oracle" in variant:
        clustering = results["rounds"][0]["strategy"]["setup"]["clustering"]
        assert clustering["global"] == {"ari": 1.0, "purity": 1.0}
