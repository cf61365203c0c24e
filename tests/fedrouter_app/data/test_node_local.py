"""Node-local data (data=node): a node's own files, a node-side data config, and what the server knows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrouter_app.config.compose import load_run_config
from fedrouter_app.data.errors import DataError
from fedrouter_app.data.node_local import node_client_data, node_table
from fedrouter_app.data.partition import seen_tasks, unseen_tasks
from fedrouter_app.schema.checks import ConfigError
from tests.conftest import TINY


def jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def unlabelled(n: int, tag: str = "q") -> list[dict[str, str]]:
    return [{"instruction": f"{tag} question {i}", "response": f"answer {i}"} for i in range(n)]


def cfg(*overrides: str):
    return load_run_config([*TINY, "data=node", *overrides])


def test_the_server_knows_task_names_only():
    config = cfg()
    assert config.data.tasks == ["local"] and config.data.tables == []
    assert seen_tasks(config) == ("local",) and unseen_tasks(config) == ()
    with pytest.raises(ConfigError, match=r"leave data\.tables empty"):
        cfg("data.tables=[{path:/data/x.jsonl,task:local}]")


def test_an_unlabelled_file_is_the_runs_one_task_with_a_held_out_share(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", unlabelled(20))
    data = node_client_data(cfg(), 1, {"data": str(path)})
    assert data.partition_id == 1 and data.tasks == ("local",)
    assert len(data.train) == 16 and len(data.test) == 4  # test_fraction 0.2, at most test_examples_per_task
    assert not {ex.instruction for ex in data.train} & {ex.instruction for ex in data.test}
    assert data.metrics == {"local": "exact"}


def test_a_labelled_file_with_its_own_test_split(tmp_path):
    rows = [
        {"task": t, "instruction": f"{t} {i}", "response": f"a fairly long answer {i}"} for t in "ab" for i in range(6)
    ]
    train = jsonl(tmp_path / "train.jsonl", rows)
    test = jsonl(tmp_path / "test.jsonl", [{"task": "b", "instruction": "held", "response": "out"}])
    data = node_client_data(cfg("data.tasks=[a,b,c]"), 0, {"data": str(train), "data-test": str(test)})
    assert data.tasks == ("a", "b")
    assert len(data.train) == 11  # task a has no test rows: one of its six is held out (0.2 x 6, rounded)
    assert sorted(ex.task for ex in data.test) == ["a", "b"] and data.metrics["b"] == "rouge"


def test_a_node_side_data_config_maps_columns_and_reads_paths_next_to_it(tmp_path):
    rows = [{"kind": "a", "prompt": f"p{i}", "answer": f"x{i}"} for i in range(10)]
    jsonl(tmp_path / "mine.jsonl", rows)
    (tmp_path / "node.yaml").write_text(
        "path: mine.jsonl\ntask_field: kind\ninstruction_field: prompt\nresponse_field: answer\nprefix: 'Q: '\n"
    )
    data = node_client_data(cfg("data.tasks=[a]"), 0, {"data": str(tmp_path / "node.yaml")})
    assert len(data.train) == 8 and data.train[0].instruction.startswith("Q: p")


@pytest.mark.parametrize(
    ("node_config", "rows", "message"),
    [
        ({}, None, "names none: start its SuperNode with --node-config"),
        ({"data": "/nowhere/train.jsonl"}, None, "unreadable file"),
        ({"data": "FILE"}, [{"instruction": "x"}] * 5, "missing column(s) 'response'"),
        ({"data": "FILE"}, [{"task": "zz", "instruction": "x", "response": "y"}] * 5, "task 'zz', which is not one"),
        ({"data": "FILE"}, [{"instruction": "", "response": "y"}] * 5, "no usable rows"),
        ({"data": "FILE"}, [{"instruction": "x", "response": "y"}], "at least 2 are needed"),
        ({"data": "/nowhere/node.yaml"}, None, "node data config not found"),
    ],
)
def test_missing_or_malformed_data_is_one_line_naming_the_file(tmp_path, node_config, rows, message):
    if node_config.get("data") == "FILE":
        node_config = {"data": str(jsonl(tmp_path / "bad.jsonl", rows))}
    with pytest.raises(DataError) as err:
        node_client_data(cfg(), 0, node_config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_node_side_config_with_an_unknown_key_is_refused(tmp_path):
    (tmp_path / "node.yaml").write_text("path: x.jsonl\ntask: local\ncolumns: [a]\n")
    with pytest.raises(DataError, match=r"node\.yaml"):
        node_table(cfg(), {"data": str(tmp_path / "node.yaml")})


def test_a_changed_file_is_read_again(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", unlabelled(10))
    assert len(node_client_data(cfg(), 0, {"data": str(path)}).train) == 8
    jsonl(path, unlabelled(20, tag="new"))
    assert len(node_client_data(cfg(), 0, {"data": str(path)}).train) == 16


def test_a_node_side_config_with_a_python_tag_or_a_deeply_nested_row_is_one_line(tmp_path):
    (tmp_path / "node.yaml").write_text("path: !!python/object/apply:os.system ['echo hi']\ntask: local\n")
    with pytest.raises(DataError) as err:
        node_table(cfg(), {"data": str(tmp_path / "node.yaml")})
    assert "node.yaml" in str(err.value) and "\n" not in str(err.value)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep\.jsonl: line 1 is nested too deeply"):
        node_client_data(cfg(), 0, {"data": str(deep)})
