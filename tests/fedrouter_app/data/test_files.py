"""Local tables (data=files): every format, the column mapping, held-out splits, and bad files."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedrouter_app.data.errors import DataError, TooFewSamplesError
from fedrouter_app.data.files import read_file
from fedrouter_app.data.partition import build_client_data
from fedrouter_app.data.tables import TableSource, build_pools, load_pools, loaders
from fedrouter_app.schema.data import DataSettings, TableSettings


def rows(n_per_task: int = 10, tasks: tuple[str, ...] = ("alpha", "beta")) -> list[dict[str, str]]:
    return [
        {"category": task, "prompt": f"{task} question {i}", "ctx": f"context {i}", "answer": f"{task}{i}"}
        for task in tasks
        for i in range(n_per_task)
    ]


def write(path: Path, data: list[dict[str, str]]) -> Path:
    """Write rows in the format the suffix names."""
    kind = path.suffix
    if kind == ".json":
        path.write_text(json.dumps(data))
    elif kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    elif kind == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    elif kind == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(data), path)
    return path


def settings(*tables: TableSettings, tasks: tuple[str, ...] = ("alpha", "beta"), **kw: object) -> DataSettings:
    return DataSettings(
        source="files",
        tasks=list(tasks),
        prefix_free=False,
        prompt_template="{instruction}",
        response_template="{response}",
        tables=list(tables),
        **kw,
    )


def mapped(path: Path | str, **kw: object) -> TableSettings:
    fields = {
        "task_field": "category",
        "instruction_field": "prompt",
        "context_field": "ctx",
        "response_field": "answer",
    }
    return TableSettings(path=str(path), **{**fields, **kw})


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_format_maps_to_the_schema(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", rows())
    pools = load_pools(settings(mapped(path)))
    assert list(pools) == ["alpha", "beta"]
    alpha = pools["alpha"]
    assert len(alpha.test) == 2 and len(alpha.train) == 8  # test_fraction 0.2 of 10 rows
    assert not set(alpha.train) & set(alpha.test)
    example = next(ex for ex in alpha.train + alpha.test if ex.response == "alpha3")
    assert example.instruction == "alpha question 3\n\ncontext 3" and example.task == "alpha"
    assert alpha.metric == "exact" and str(path) in alpha.origins


def test_column_oriented_json_and_a_fixed_task_per_file(tmp_path):
    table = {"q": [f"question {i}" for i in range(6)], "a": [f"a long answer of many words {i}" for i in range(6)]}
    (tmp_path / "cols.json").write_text(json.dumps(table))
    cfg = settings(
        TableSettings(path=str(tmp_path / "cols.json"), task="gen", instruction_field="q", response_field="a"),
        tasks=("gen",),
    )
    pools = load_pools(cfg)
    assert pools["gen"].metric == "rouge"  # auto: answers longer than 3 words
    assert {ex.task for ex in pools["gen"].train} == {"gen"}


def test_balance_keeps_as_many_rows_of_each_answer_as_the_rarest_has(tmp_path):
    counts = {"alpha": {"yes": 9, "no": 3}, "beta": {"a": 4, "b": 5, "c": 6}}
    labelled = [
        {"category": task, "prompt": f"{task} {label} {i}", "answer": label}
        for task, answers in counts.items()
        for label, n in answers.items()
        for i in range(n)
    ]
    path = write(tmp_path / "labelled.jsonl", labelled)
    table = mapped(path, context_field=None, balance=True)
    pools = build_pools(settings(table), loaders()["files"])
    answers = {t: sorted(ex.response for ex in p.train + p.test) for t, p in pools.items()}
    assert answers == {"alpha": ["no"] * 3 + ["yes"] * 3, "beta": ["a"] * 4 + ["b"] * 4 + ["c"] * 4}
    assert build_pools(settings(table), loaders()["files"]) == pools  # the same sample every time
    unbalanced = load_pools(settings(mapped(path, context_field=None)))
    assert len(unbalanced["alpha"].train + unbalanced["alpha"].test) == 12


def test_a_test_file_is_held_out_whole_and_globs_join_files(tmp_path):
    write(tmp_path / "part-1.jsonl", rows(4))
    write(tmp_path / "part-2.jsonl", rows(4)[:2])
    write(tmp_path / "test.csv", rows(3))
    pools = load_pools(settings(mapped(tmp_path / "part-*.jsonl", test_split=str(tmp_path / "test.csv"))))
    assert len(pools["alpha"].train) == 6 and len(pools["alpha"].test) == 3
    assert len(pools["beta"].train) == 4


def test_clients_get_disjoint_examples_and_a_seeded_order(tmp_path, make_cfg):
    path = write(tmp_path / "data.jsonl", rows(40))
    cfg = make_cfg(
        "data=files",
        "data.tasks=[alpha,beta]",
        f"data.tables=[{{path:'{path}',task_field:category,instruction_field:prompt,response_field:answer}}]",
        "scenario=single",
        "scenario.train_examples_per_client=8",
        "method=fedit",
    )
    c0, c2 = build_client_data(cfg, 0), build_client_data(cfg, 2)
    assert c0.tasks == c2.tasks == ("alpha",)
    assert len(set(c0.train)) == 8 and not set(c0.train) & set(c2.train)
    assert not set(c0.train) & set(c0.test)
    other_seed = build_client_data(replace(cfg, seed=1), 0)
    assert set(other_seed.train) != set(c0.train)
    assert set(other_seed.test) | set(c0.test) <= set(load_pools(cfg.data)["alpha"].test)


def test_parsed_tables_are_cached_per_process(tmp_path):
    cfg = settings(mapped(write(tmp_path / "data.jsonl", rows())))
    assert TableSource(cfg, 0).pools is TableSource(cfg, 1).pools


def bad(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("broken.jsonl", '{"category": "alpha"}\nnot json\n', "line 2 is not valid JSON"),
        ("broken.json", "[{", "unreadable json file"),
        ("scalar.json", "[1, 2]", "expected a JSON list of objects"),
        ("empty.csv", "", "holds no rows"),
        ("broken.parquet", b"PAR1 not really parquet", "unreadable parquet file"),
        ("data.txt", "a,b", "cannot tell the format"),
    ],
)
def test_unreadable_files_name_the_file_and_the_problem(tmp_path, name, content, problem):
    path = bad(tmp_path, name, content)
    with pytest.raises(DataError, match=problem) as err:
        load_pools(settings(mapped(path)))
    assert str(path) in str(err.value)


def test_missing_file_and_glob(tmp_path):
    with pytest.raises(DataError, match=r"missing\.csv: unreadable file"):
        load_pools(settings(mapped(tmp_path / "missing.csv")))
    with pytest.raises(DataError, match="no file matches"):
        load_pools(settings(mapped(tmp_path / "none-*.csv")))


def test_missing_columns_are_listed_with_those_present(tmp_path):
    path = write(tmp_path / "data.csv", rows())
    with pytest.raises(DataError, match=r"data\.csv: missing column\(s\) 'output'; columns present: category"):
        load_pools(settings(mapped(path, response_field="output")))


def test_an_empty_task_names_the_file(tmp_path):
    path = write(tmp_path / "data.jsonl", rows())
    with pytest.raises(DataError, match=r"data\.jsonl: empty task 'gamma'.*alpha \(10\), beta \(10\)"):
        load_pools(settings(mapped(path), tasks=("alpha", "gamma")))
    blank = write(tmp_path / "blank.jsonl", [{**rows(1)[0], "category": ""}])
    with pytest.raises(DataError, match=r"blank\.jsonl: row 1 has an empty task name"):
        load_pools(settings(mapped(blank)))


def test_a_task_too_small_to_hold_out_is_refused(tmp_path):
    path = write(tmp_path / "data.jsonl", rows(1))
    with pytest.raises(DataError, match=r"data\.jsonl: task 'alpha' has 1 usable row"):
        load_pools(settings(mapped(path)))


def test_a_client_with_fewer_samples_than_clusters_is_refused(tmp_path, make_cfg):
    path = write(tmp_path / "small.jsonl", rows(3))  # 2 training rows per task after holding one out
    cfg = make_cfg(
        "data=files",
        "data.tasks=[alpha,beta]",
        f"data.tables=[{{path:'{path}',task_field:category,instruction_field:prompt,response_field:answer}}]",
        "scenario=single",
        "method=fedrouter",
        "method.n_local=3",
        "method.n_global=2",
    )
    with pytest.raises(TooFewSamplesError, match=r"small\.jsonl\): client 0 holds 2 distinct training samples"):
        build_client_data(cfg, 0)


def test_read_file_returns_columns(tmp_path):
    data, columns = read_file(write(tmp_path / "x.csv", rows(2)))
    assert columns == ["category", "prompt", "ctx", "answer"] and len(data) == 4
