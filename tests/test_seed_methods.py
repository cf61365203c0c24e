"""FL-TAC, FedDPA and TAP run whole (small) federations through the real ServerApp code."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrouter_app.runners.inprocess import run_inprocess

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes

BASE = [
    "num_clients=4",
    "num_rounds=3",
    "train.local_steps=4",
    "train.batch_size=8",
    "scenario=dual",
    "scenario.train_examples_per_client=32",
    "scenario.test_examples_per_task=4",
    "data.tasks=[copy,reverse,capital,sentiment]",
    "eval.scope=global",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=fltac"],
        ["method=fltac_code", "method.unseen_rule=oracle", "fraction_train=0.5"],
        ["method=fltac", "method.unseen_rule=average"],
        ["method=feddpa", "fraction_train=0.5"],
        ["method=feddpa_code", "method.variant=F", "method.finetune_steps=3"],
        ["method=tap", "method.distill_steps=3", "fraction_train=0.5"],
        ["method=fltac_router", "fraction_train=0.5"],
        ["method=tap_router", "method.distill_steps=3", "fraction_train=0.5"],
    ],
    ids=[
        "fltac",
        "fltac-code-oracle-partial",
        "fltac-average",
        "feddpa-t-partial",
        "feddpa-f-code",
        "tap-partial",
        "fltac-router-partial",
        "tap-router-partial",
    ],
)
def test_method_completes(overrides):
    results, _, _ = run_inprocess([*BASE, *overrides], 4)
    assert results["run"]["status"] == "completed"
    final = results["rounds"][-1]["evaluate"]
    assert final["own_mean"]["score"] >= 0 and final["other_mean"]
    if overrides[0].endswith("_router"):
        # Every client routed its test samples of the two tasks it does not hold: 4 clients x 2 tasks x 4 samples.
        routing = results["rounds"][-1]["strategy"]["evaluate"]["routing"]["global"]
        assert sum(n for row in routing["confusion"].values() for n in row.values()) == 32
        assert 0 <= routing["accuracy_other"] <= 1


def test_feddpa_global_adapter_follows_fedit_exactly():
    _, fedit_dir, _ = run_inprocess([*BASE, "method=fedit"], 4)
    _, feddpa_dir, _ = run_inprocess([*BASE, "method=feddpa"], 4)
    a = load_file(str(fedit_dir / "adapters" / "global" / "adapter_model.safetensors"))
    b = load_file(str(feddpa_dir / "adapters" / "global" / "adapter_model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_tap_replaces_every_task_at_first_participation_and_distils_at_the_end():
    results, run_dir, _ = run_inprocess([*BASE, "method=tap", "method.distill_steps=3"], 4)
    first = results["rounds"][1]
    assert first["strategy"]["train"]["replaced_tasks"] == {str(c): 2 for c in range(4)}
    last = results["rounds"][-1]["evaluate"]
    assert set(last["views"]) == {"regular", "teacher"}
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == [
        "shared",
        "task.capital",
        "task.copy",
        "task.reverse",
        "task.sentiment",
    ]
