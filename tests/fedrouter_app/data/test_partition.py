import pytest

from fedrouter_app.data.partition import STRIDE, build_client_data, client_tasks, task_shares
from fedrouter_app.data.synthetic import make_examples


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
