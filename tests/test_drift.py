"""scenario=drift: which clients drift, their data before and after the drift round, and tiny whole runs."""

import pytest
from flwr.app import Context, RecordDict

from fedrouter_app.client.client_env import client_data
from fedrouter_app.client.client_handler import build_env
from fedrouter_app.config.compose import config_fingerprint, load_run_config
from fedrouter_app.data.partition import (
    build_client_data,
    client_tasks,
    drift_round,
    drift_source,
    drifting_clients,
    is_drifted,
    stream_positions,
    train_counts,
)
from fedrouter_app.runners.inprocess import run_inprocess
from fedrouter_app.schema.checks import ConfigError

TASKS = "data.tasks=[copy,reverse,capital,sentiment]"


def drift_cfg(make_cfg, *overrides):
    return make_cfg("scenario=drift", TASKS, "num_rounds=4", *overrides)


def test_a_seeded_fraction_of_clients_drifts():
    assert drifting_clients(0, 8, 0.5) == drifting_clients(0, 8, 0.5)
    assert len(drifting_clients(0, 8, 0.5)) == 4 and len(set(drifting_clients(0, 8, 0.5))) == 4
    assert {drifting_clients(seed, 8, 0.5) for seed in range(5)} != {drifting_clients(0, 8, 0.5)}
    assert drifting_clients(3, 8, 1.0) == tuple(range(8))
    assert len(drifting_clients(0, 3, 0.1)) == 1  # at least one


def test_drift_round_defaults_to_half_way(make_cfg):
    assert drift_round(drift_cfg(make_cfg)) == 3
    assert drift_round(drift_cfg(make_cfg, "num_rounds=6")) == 4
    assert drift_round(drift_cfg(make_cfg, "scenario.drift.round=2")) == 2
    assert drift_round(make_cfg("scenario=dual")) is None


def test_drifting_clients_take_the_tasks_of_the_client_two_windows_on(make_cfg):
    cfg = drift_cfg(make_cfg)
    movers = drifting_clients(cfg.seed, cfg.num_clients, 0.5)
    assert len(movers) == 2
    for client in range(cfg.num_clients):
        before, at, later = (build_client_data(cfg, client, r) for r in (2, 3, 4))
        assert before.tasks == client_tasks(cfg, client) and before == build_client_data(cfg, client)
        assert at == later
        if client not in movers:
            assert at == before and not is_drifted(cfg, client, 4)
            continue
        assert is_drifted(cfg, client, 3) and not is_drifted(cfg, client, 2)
        assert drift_source(cfg, client) == (client + 2) % 4
        # A mix the federation knows, sharing no task with the old one; training and test data both change.
        assert at.tasks == client_tasks(cfg, (client + 2) % 4) and not set(at.tasks) & set(before.tasks)
        assert {ex.task for ex in at.train} == set(at.tasks) and len(at.train) == len(before.train)
        assert {ex.task for ex in at.test} == set(at.tasks) and len(at.test) == len(before.test)
        assert set(at.metrics) == set(at.tasks)


def test_under_global_scope_the_test_set_stays_and_only_own_tasks_move(make_cfg):
    cfg = drift_cfg(make_cfg, "eval.scope=global")
    client = drifting_clients(cfg.seed, cfg.num_clients, 0.5)[0]
    before, after = build_client_data(cfg, client, 1), build_client_data(cfg, client, 3)
    assert before.test == after.test and before.tasks != after.tasks


def test_other_scenarios_ignore_the_round(make_cfg):
    for scenario in ("dual", "single", "unseen", "dirichlet"):
        cfg = make_cfg(f"scenario={scenario}")
        assert cfg.scenario.drift is None
        for client in range(cfg.num_clients):
            assert build_client_data(cfg, client, 7) == build_client_data(cfg, client)
            assert not is_drifted(cfg, client, 7)


def test_other_scenarios_fingerprint_as_before():
    # Computed before scenario=drift and method.drift_check existed: completed sweep jobs stay skipped.
    assert config_fingerprint(load_run_config(["scenario=dual", "method=fedit"])) == "712f941d130f0705"
    assert config_fingerprint(load_run_config(["scenario=single", "method=local"])) == "72fb0d2c83b0c621"
    # FedRouter's defaults moved on: its runs now also score the fallback routing and diagnose held-out samples, so
    # they compute more than before and are run again; at the old behaviour they fingerprint as before.
    old_fedrouter = ["method.router_fallback=none", "method.diagnose_routing=off"]
    assert config_fingerprint(load_run_config(["scenario=dual", "method=fedrouter", *old_fedrouter])) == (
        "77810174e480594e"
    )
    assert config_fingerprint(load_run_config(["scenario=dual", "method=fedrouter"])) != "77810174e480594e"
    assert config_fingerprint(load_run_config(["scenario=drift"])) != config_fingerprint(load_run_config())


def test_the_cache_keeps_one_partition_per_phase(make_cfg):
    cfg = drift_cfg(make_cfg)
    movers = drifting_clients(cfg.seed, cfg.num_clients, 0.5)
    staying = next(c for c in range(cfg.num_clients) if c not in movers)
    assert client_data(cfg, "k", movers[0], 1) is client_data(cfg, "k", movers[0], 2)
    assert client_data(cfg, "k", movers[0], 3) is client_data(cfg, "k", movers[0], 4)
    assert client_data(cfg, "k", movers[0], 3) != client_data(cfg, "k", movers[0], 2)
    assert client_data(cfg, "k", staying, 1) is client_data(cfg, "k", staying, 4)


def test_a_message_gets_the_data_of_its_round():
    overrides = ("scenario=drift", TASKS, "num_clients=4", "num_rounds=4", "scenario.train_examples_per_client=8")
    cfg = load_run_config(list(overrides))
    client = drifting_clients(cfg.seed, cfg.num_clients, 0.5)[0]
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": client, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )
    assert build_env(context, overrides, 2).data.tasks == client_tasks(cfg, client)
    assert build_env(context, overrides, 3).data.tasks == client_tasks(cfg, drift_source(cfg, client))


def test_drifted_examples_of_finite_pools_come_after_what_every_client_read(make_cfg):
    cfg = drift_cfg(make_cfg)

    class Pool:
        def size(self, task, split):
            return 10_000

    pool = Pool()
    movers = drifting_clients(cfg.seed, cfg.num_clients, 0.5)
    for task in cfg.data.tasks:
        read = [
            set(stream_positions(cfg, pool, task, "train", c, n, drifted))
            for drifted, clients in ((False, range(cfg.num_clients)), (True, movers))
            for c in clients
            if (n := train_counts(cfg, c, drifted).get(task, 0))
        ]
        assert sum(map(len, read)) == len(set().union(*read))  # disjoint


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["scenario.drift.round=1"], r"drift.round must be in \[2, num_rounds=4\]"),
        (["scenario.drift.round=5"], r"drift.round must be in \[2, num_rounds=4\]"),
        (["num_rounds=1"], "needs num_rounds >= 2"),
        (["scenario.drift.fraction=0"], r"fraction must be in \(0, 1\]"),
        (["scenario.drift.offset=4"], "already holds"),
        (["scenario.kind=dirichlet", "scenario.alpha=1.0"], "needs scenario.kind=window"),
    ],
)
def test_bad_drift_settings_fail_in_one_line(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        drift_cfg(make_cfg, *overrides)


def test_the_drift_sweep_runs_five_variants_on_three_seeds_with_per_round_scores():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from fedrouter_app.cli.sweep import job_overrides
    from fedrouter_app.config.compose import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            config = compose("config", overrides=["sweep=drift"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    jobs = job_overrides(config)
    methods = {o.split("=")[1] for job in jobs for o in job if o.startswith("method=")}
    assert len(jobs) == 15 and methods == {"fedrouter", "fedrouter_drift", "fedit", "ifca", "local"}
    # Jobs of fedrouter and fedrouter_drift (both method.name fedrouter) go to directories of their own.
    subdir = OmegaConf.to_container(config.hydra.sweep)["subdir"]
    assert subdir == "${hydra:runtime.choices.method}-s${seed}"
    cfg = load_run_config(["sweep=drift", "method=fedrouter_drift"])
    assert cfg.scenario.name == "drift" and cfg.method.drift_check and cfg.eval.every == 1
    assert drift_round(cfg) == 4 and cfg.num_rounds == 6
    assert not load_run_config(["sweep=drift", "method=fedrouter"]).method.drift_check


# Tiny whole runs: the drift round is round 2 of 2, so each client is evaluated once on each side of it.
BASE = [
    "num_clients=4",
    "num_rounds=2",
    "train.local_steps=4",
    "train.batch_size=8",
    "scenario=drift",
    "scenario.train_examples_per_client=32",
    "scenario.test_examples_per_task=4",
    TASKS,
    "eval.at_start=false",
]


def own_tasks(round_json):
    clients = round_json["evaluate"]["clients"]
    return {int(c): tuple(sorted(t for t, m in e["tasks"].items() if m["own"])) for c, e in clients.items()}


def expected_tasks(server_round):
    cfg = load_run_config(BASE)
    return {c: tuple(sorted(build_client_data(cfg, c, server_round).tasks)) for c in range(cfg.num_clients)}


@pytest.mark.slow
def test_fedrouter_with_its_drift_check_registers_the_drifting_clients_again():
    results, _, _ = run_inprocess([*BASE, "method=fedrouter_drift"], 4)
    assert results["run"]["status"] == "completed" and not results["rounds"][-1]["failures"]
    first, second = results["rounds"]
    assert own_tasks(first) == expected_tasks(1) and own_tasks(second) == expected_tasks(2)
    movers = drifting_clients(0, 4, 0.5)
    # Only the drifting clients cluster again; the others answered that nothing changed.
    assert sorted(int(c) for c in second["strategy"]["train"]["reregistered"]) == list(movers)
    assert "reregistered" not in first["strategy"].get("train", {})
    assert second["compute"]["query.register"]["replies"] == 4  # every registered client was asked
    # The drifting clients' routing counts are of their new test set (their test embeddings were refreshed).
    for c in movers:
        routed = {k.split(".")[3] for k in second["evaluate"]["clients"][str(c)]["metrics"] if k.startswith("route.")}
        assert routed == set(expected_tasks(2)[c])


@pytest.mark.slow
def test_fedit_follows_the_drifted_data():
    results, _, _ = run_inprocess([*BASE, "method=fedit"], 4)
    assert results["run"]["status"] == "completed"
    first, second = results["rounds"]
    assert own_tasks(first) == expected_tasks(1) and own_tasks(second) == expected_tasks(2)
    assert own_tasks(first) != own_tasks(second)
