import pytest

from fedrouter_app.data.partition import (
    STRIDE,
    build_client_data,
    client_tasks,
    seen_tasks,
    task_shares,
    train_counts,
    training_tasks,
    unseen_tasks,
)
from fedrouter_app.data.synthetic import make_examples
from fedrouter_app.schema.checks import ConfigError


def test_cyclic_task_windows(make_cfg):
    cfg = make_cfg("scenario=dual")
    tasks = cfg.data.tasks
    assert client_tasks(cfg, 0) == (tasks[0], tasks[1])
    assert client_tasks(cfg, len(tasks) - 1) == (tasks[-1], tasks[0])
    single = make_cfg("scenario=single")
    assert [client_tasks(single, i) for i in range(3)] == [(tasks[0],), (tasks[1],), (tasks[2],)]
    iid = make_cfg("scenario=iid")
    assert set(client_tasks(iid, 2)) == set(tasks)


def test_shares_split_evenly():
    assert task_shares(10, 3) == [4, 3, 3]
    assert sum(task_shares(129, 8)) == 129


def test_partition_contents(make_cfg):
    cfg = make_cfg("scenario=dual")
    data = build_client_data(cfg, 1)
    assert data.partition_id == 1
    assert len(data.train) == cfg.scenario.train_examples_per_client
    assert {e.task for e in data.train} == set(data.tasks)
    assert len(data.test) == cfg.scenario.test_examples_per_task * len(data.tasks)
    assert set(data.metrics) == set(data.tasks)
    assert build_client_data(cfg, 1) == data


def test_clients_read_disjoint_index_ranges(make_cfg):
    cfg = make_cfg("scenario=single")
    n = cfg.scenario.train_examples_per_client
    for client in (0, 2):
        data = build_client_data(cfg, client)
        (task,) = data.tasks
        start = client * STRIDE
        assert list(data.train) == make_examples(cfg.seed, task, "train", range(start, start + n))
        assert next(iter(data.test)) == make_examples(cfg.seed, task, "test", [start])[0]


def test_global_scope_tests_every_task(make_cfg):
    cfg = make_cfg("eval.scope=global")
    data = build_client_data(cfg, 0)
    assert {e.task for e in data.test} == set(cfg.data.tasks)
    assert set(data.tasks) < set(data.metrics)


def test_bad_partition_id(make_cfg):
    with pytest.raises(ValueError, match="outside"):
        build_client_data(make_cfg(), 99)


def test_dirichlet_split_is_seeded_and_leaves_no_client_without_data(make_cfg):
    cfg = make_cfg("scenario=dirichlet", "num_clients=6", "scenario.alpha=0.3", "scenario.min_train_examples=8")
    counts = [train_counts(cfg, c) for c in range(cfg.num_clients)]
    assert counts == [train_counts(cfg, c) for c in range(cfg.num_clients)]
    assert all(sum(c.values()) >= 8 for c in counts)
    assert sum(sum(c.values()) for c in counts) == cfg.num_clients * cfg.scenario.train_examples_per_client
    # Skewed: with a small alpha the clients' task mixes differ.
    assert len({tuple(sorted(c.items())) for c in counts}) == cfg.num_clients
    other_seed = make_cfg("scenario=dirichlet", "num_clients=6", "scenario.alpha=0.3", "seed=1")
    assert [train_counts(other_seed, c) for c in range(6)] != counts


def test_dirichlet_client_data_follows_the_counts(make_cfg):
    cfg = make_cfg("scenario=dirichlet", "num_clients=5")
    for client in range(cfg.num_clients):
        data = build_client_data(cfg, client)
        counts = train_counts(cfg, client)
        assert data.tasks == client_tasks(cfg, client) == tuple(counts)
        assert all(n > 0 for n in counts.values())
        assert {t: sum(e.task == t for e in data.train) for t in data.tasks} == counts
        assert {e.task for e in data.test} == set(data.tasks)  # eval.scope=local: own tasks only
    assert build_client_data(cfg, 3) == build_client_data(cfg, 3)


def test_dirichlet_that_cannot_feed_every_client_says_so(make_cfg):
    # Every client would need exactly its average (32 of 32): no skewed draw gives that.
    cfg = make_cfg("scenario=dirichlet", "num_clients=9", "scenario.alpha=0.05", "scenario.min_train_examples=32")
    with pytest.raises(ConfigError, match=r"raise scenario.alpha"):
        build_client_data(cfg, 0)


UNSEEN = ("scenario=unseen", "scenario.unseen_tasks=[sort_chars,summarize]")


def test_unseen_tasks_are_in_no_training_set(make_cfg):
    cfg = make_cfg(*UNSEEN, "num_clients=8")
    held_out = {"sort_chars", "summarize"}
    assert set(training_tasks(cfg)) == set(cfg.data.tasks) - held_out
    for client in range(cfg.num_clients):
        data = build_client_data(cfg, client)
        assert not held_out & set(data.tasks)
        assert not held_out & {e.task for e in data.train}
        assert not held_out & {e.task for e in data.test}  # eval.scope=local
    assert set(unseen_tasks(cfg)) == held_out
    assert set(seen_tasks(cfg)) == set(training_tasks(cfg))


def test_unseen_tasks_are_in_global_test_sets(make_cfg):
    cfg = make_cfg(*UNSEEN, "eval.scope=global")
    for client in range(cfg.num_clients):
        data = build_client_data(cfg, client)
        assert {e.task for e in data.test} == set(cfg.data.tasks)
        assert {"sort_chars", "summarize"} <= set(data.metrics) and not {"sort_chars", "summarize"} & set(data.tasks)


def test_windows_skip_unseen_tasks(make_cfg):
    cfg = make_cfg(*UNSEEN)
    train = training_tasks(cfg)
    assert client_tasks(cfg, 0) == (train[0], train[1])
    assert client_tasks(cfg, len(train) - 1) == (train[-1], train[0])


def test_windows_that_cover_few_tasks_leave_the_rest_unseen(make_cfg):
    cfg = make_cfg("method=fedit", "scenario=single", "num_clients=3")
    assert unseen_tasks(cfg) == tuple(cfg.data.tasks[3:])
    assert seen_tasks(cfg) == tuple(cfg.data.tasks[:3])


def test_the_paper_split_gives_every_trained_task_two_holders_and_tests_the_trained_tasks(make_cfg):
    cfg = make_cfg("method=fedrouter", "scenario=paper_split")  # 4 clients: tasks 0 and 1, two holders each
    tasks = cfg.data.tasks
    assert [client_tasks(cfg, c) for c in range(4)] == [(tasks[0],), (tasks[0],), (tasks[1],), (tasks[1],)]
    assert seen_tasks(cfg) == (tasks[0], tasks[1]) and cfg.method.n_global == 2
    for client in range(4):
        data = build_client_data(cfg, client)
        assert {e.task for e in data.test} == {tasks[0], tasks[1]}  # covered: the trained tasks, none held out
    # The two holders of a task read different parts of its stream.
    first, second = (build_client_data(cfg, c) for c in (0, 1))
    assert first.train != second.train


def test_every_reported_cell_gets_its_test_items_dealt_over_its_clients(make_cfg):
    from fedrouter_app.data.partition import stream_positions, test_counts

    cfg = make_cfg("scenario=unseen", "eval.scope=covered", "scenario.test_items_per_cell=12")  # 4 clients
    tasks = cfg.data.tasks
    for task in tasks:
        counts = test_counts(cfg, task)
        holders = [c for c in range(4) if task in client_tasks(cfg, c)]
        if not holders:  # held out: the 12 items over all 4 clients
            assert counts == [3, 3, 3, 3]
            continue
        own = sum(counts[c] for c in holders)
        other = sum(counts[c] for c in range(4) if c not in holders)
        assert own >= 12 and (other >= 12 or len(holders) == 4)
        assert max(counts[c] for c in holders) - min(counts[c] for c in holders) == 0

    # Clients still read disjoint positions of the task's test stream, client after client.
    class Pool:
        def size(self, task: str, split: str) -> int:
            return 1000

    task = tasks[0]
    spans = [list(stream_positions(cfg, Pool(), task, "test", c, test_counts(cfg, task)[c])) for c in range(4)]
    flat = [p for span in spans for p in span]
    assert flat == list(range(len(flat)))
    # Covered: the declared held-out tasks are tested, a task the 4 clients' windows leave untrained is not.
    data = build_client_data(cfg, 0)
    covered = [t for t in tasks if t in seen_tasks(cfg) or t in cfg.scenario.unseen_tasks]
    assert len(covered) < len(tasks) and {e.task for e in data.test} == set(covered)
    assert len(data.test) == sum(test_counts(cfg, t)[0] for t in covered)


@pytest.mark.parametrize(
    ("scenario", "cells"),
    [("dual", {"own"}), ("paper_split", {"other_clients"}), ("unseen", {"held_out"})],
)
def test_the_claims_scope_tests_only_the_cells_a_scenario_exists_to_measure(make_cfg, scenario, cells):
    cfg = make_cfg("method=fedit", f"scenario={scenario}", "eval.scope=claims")
    trained = set(seen_tasks(cfg))
    for client in range(cfg.num_clients):
        own = set(client_tasks(cfg, client))
        tested = {e.task for e in build_client_data(cfg, client).test}
        expected = set()
        if "own" in cells:
            expected |= own
        if "other_clients" in cells:
            expected |= trained - own
        if "held_out" in cells:
            expected |= set(cfg.data.tasks) - trained
        assert tested == expected and tested


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("scenario=unseen", "scenario.unseen_tasks=[nope]"), "not in data.tasks"),
        (("scenario.claims=[everything]",), "scenario.claims must be"),
        (("scenario.clients_per_window=0",), "clients_per_window must be >= 1"),
        (("scenario.kind=dirichlet", "scenario.alpha=1", "scenario.clients_per_window=2"), "kind=window"),
        (("scenario.test_items_per_cell=0",), "test_items_per_cell must be >= 1"),
        (("scenario=unseen", "scenario.tasks_per_client=7"), "tasks_per_client"),
        (("scenario=dirichlet", "scenario.alpha=0"), "scenario.alpha"),
        (("scenario.kind=random",), "scenario.kind"),
    ],
)
def test_bad_scenarios_fail_in_one_line(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        cfg = make_cfg(*overrides)
        build_client_data(cfg, 0)


def test_pool_shares_follow_the_task_pools():
    from fedrouter_app.data.partition import proportional_shares

    assert proportional_shares(600, [24000, 11786]) == [402, 198]  # gigaword + samsum in the reference: about 2:1
    assert proportional_shares(10, [1, 1, 1]) == task_shares(10, 3)
    assert proportional_shares(3, [1000, 1, 1]) == [1, 1, 1]  # every task keeps at least one example
    for total, weights in ((600, [24000, 28341, 11786, 24000]), (7, [5, 3]), (100, [0, 0])):
        assert sum(proportional_shares(total, weights)) == total


def test_pool_shares_need_finite_pools(make_cfg):
    with pytest.raises(ConfigError, match=r"scenario\.shares=pool needs a source with finite task pools"):
        make_cfg("scenario.shares=pool")
    with pytest.raises(ConfigError, match=r"scenario\.shares must be one of even, pool"):
        make_cfg("scenario.shares=half")
