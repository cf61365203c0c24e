"""End to end on Flower's simulation runtime (Ray), 4 clients, 2 rounds."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedrouter_app.model.loading import model_path
from fedrouter_app.runners.simulation import simulate
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # whole runs, or Ray, Flower or worker processes


def run(*overrides: str) -> tuple[dict, object]:
    run_dir = simulate(tiny_overrides("train.local_steps=10", *overrides), num_cpus=2)
    return json.loads((run_dir / "results.json").read_text()), run_dir


@pytest.fixture(scope="module")
def fedit():
    return run("method=fedit", "output.mlflow=local", "output.mlflow_experiment=simulation-test")


def test_fedit_held_out_loss_falls(fedit):
    results, _ = fedit
    assert results["run"]["status"] == "completed"
    losses = [r["evaluate"]["mean"]["loss"] for r in results["rounds"]]
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    assert losses[2] < losses[0] - 0.5, losses


def test_only_lora_tensors_travel(fedit):
    results, _ = fedit
    lora_bytes = results["adapter"]["tensor_bytes"]
    assert lora_bytes == 4 * results["adapter"]["num_parameters"]
    for rnd in results["rounds"][1:]:
        assert set(rnd["train"]["clients"]) == {"0", "1", "2", "3"}
        for traffic in rnd["traffic"]["clients"].values():
            assert traffic["train"]["bytes_down"] == lora_bytes
            assert traffic["train"]["bytes_up"] == lora_bytes
            assert traffic["train"]["wire_up"] < lora_bytes * 1.1


def test_run_directory_has_config_results_and_peft_adapter(fedit, cfg):
    results, run_dir = fedit
    assert (run_dir / "config.yaml").exists()
    assert results["run"]["command"].startswith("flwr run . --stream --run-config")
    assert (
        results["run"]["command"].endswith('--federation-config "num-supernodes=4"')
        and results["run"]["runtime"] == "simulation"
    )
    assert results["config"]["num_clients"] == 4
    base = AutoModelForCausalLM.from_pretrained(model_path(cfg.model))
    PeftModel.from_pretrained(base, str(run_dir / "adapters" / "global"))


def test_the_run_is_in_mlflow(fedit):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    results, run_dir = fedit
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("simulation-test").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedrouter.run_dir"] == str(run_dir)
    scores = [m.value for m in mlflow.get_metric_history(run.info.run_id, "eval/score")]
    assert scores == [r["evaluate"]["mean"]["score"] for r in results["rounds"]]
    assert {a.path for a in mlflow.list_artifacts(run.info.run_id)} >= {"config.yaml", "results.json"}


def test_local_trains_without_communication():
    results, _ = run("method=local")
    for rnd in results["rounds"]:
        for traffic in rnd["traffic"]["clients"].values():
            assert all(phase["bytes_down"] == phase["bytes_up"] == 0 for phase in traffic.values())
    losses = [r["evaluate"]["mean"]["loss"] for r in results["rounds"]]
    assert losses[-1] < losses[0] - 0.5


def test_fedrouter_client_that_misses_registration_joins_later():
    # Three of four clients form the global clusters; the fourth registers
    # when first sampled and is mapped to its nearest clusters.
    results, _ = run(
        "method=fedrouter",
        "method.registration_fraction=0.75",
        "method.n_global=4",
        "data.tasks=[copy,reverse,capital,sentiment]",
        "scenario.train_examples_per_client=64",
    )
    setup = results["rounds"][0]["strategy"]["setup"]
    assert len(setup["registered"]) == 3
    (late,) = {"0", "1", "2", "3"} - {str(c) for c in setup["registered"]}
    assert results["run"]["status"] == "completed"
    joined = results["rounds"][1]["strategy"]["train"]["joined"]
    assert list(joined) == [late]
    for rnd in results["rounds"][1:]:
        assert late in rnd["train"]["clients"] and late in rnd["evaluate"]["clients"]
    # Its local clusters went to the global clusters that hold its own tasks.
    majority = setup["clustering"]["majority_task"]
    own = {t for t, m in results["rounds"][-1]["evaluate"]["clients"][late]["tasks"].items() if m["own"]}
    assert {majority[str(k)] for k in joined[late]} == own
