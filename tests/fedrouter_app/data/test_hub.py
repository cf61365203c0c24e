"""Hub sources (dolly, fedrouter_mix, flan) against local fixtures shaped like the hub datasets, hub switched off.

Each shipped config is composed as is, with only the dataset ids pointed at
local directories of parquet or JSON Lines files (what ``datasets.load_dataset``
reads offline), so the real mapping code runs for every hub source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# datasets reads its cache location at import: keep it inside the test session's cache.
os.environ.setdefault("HF_DATASETS_CACHE", str(Path(os.environ["FEDROUTER_CACHE"]) / "hf-datasets"))
pa = pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

import pyarrow.parquet as pq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fedrouter_app.config.compose import build_run_config, compose_config  # noqa: E402
from fedrouter_app.data.errors import DataError  # noqa: E402
from fedrouter_app.data.tables import load_pools  # noqa: E402
from fedrouter_app.schema.settings import RunConfig  # noqa: E402


def hub_dir(root: Path, splits: dict[str, list[dict[str, Any]]], fmt: str = "parquet") -> Path:
    """A directory ``datasets.load_dataset`` reads offline: one file per split, named after it."""
    root.mkdir(parents=True)
    for split, rows in splits.items():
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), root / f"{split}.parquet")
        else:
            (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def compose_local(preset: str, paths: list[Path], *overrides: str) -> RunConfig:
    """The shipped preset with each table's dataset id replaced by a local directory (configs dropped)."""
    raw = compose_config([preset, "num_clients=4", *overrides])
    OmegaConf.set_struct(raw, False)  # tables written as flow mappings lack the keys they leave out
    for table, path in zip(raw.data.tables, paths, strict=True):
        table.path = str(path)
        table.config = None
    return build_run_config(raw)


def qqp_rows(n: int) -> list[dict[str, Any]]:
    return [{"question1": f"How do I {i}?", "question2": f"How can I {i}?", "label": i % 2, "idx": i} for i in range(n)]


def splits(make_row: Any, train: int = 10, validation: int = 3) -> dict[str, list[dict[str, Any]]]:
    return {"train": [make_row(i) for i in range(train)], "validation": [make_row(i) for i in range(validation)]}


def test_fedrouter_mix_maps_each_dataset(tmp_path):
    dirs = [
        hub_dir(tmp_path / "qqp", {"train": qqp_rows(12), "validation": qqp_rows(4), "test": qqp_rows(2)}),
        hub_dir(
            tmp_path / "web_nlg",
            splits(lambda i: {"input": [f"A{i} | b | c", "A | d | e"], "target": f"A{i} is b c.", "gem_id": str(i)}),
        ),
        hub_dir(
            tmp_path / "samsum",
            splits(lambda i: {"id": str(i), "dialogue": f"Ann: hi {i}\nBob: hello", "summary": f"Ann greets {i}."}),
        ),
        hub_dir(
            tmp_path / "gigaword",
            splits(lambda i: {"document": f"the minister said on day {i} that", "summary": f"minister speaks {i}"}),
            fmt="jsonl",
        ),
    ]
    cfg = compose_local("data=fedrouter_mix", dirs, "scenario=single")
    pools = load_pools(cfg.data)
    assert list(pools) == ["paraphrase", "data_to_text", "summarization", "headline"]
    assert len(pools["paraphrase"].train) == 12 and len(pools["paraphrase"].test) == 4  # validation held out
    qqp = next(ex for ex in pools["paraphrase"].test if ex.instruction.endswith("How can I 1?"))
    assert qqp.instruction.startswith("Do these two questions ask the same thing?") and qqp.response == "yes"
    nlg = pools["data_to_text"].train[0]
    assert nlg.instruction.startswith("Describe these facts") and " | d | e" in nlg.instruction
    assert pools["summarization"].train[0].instruction.startswith("Summarize the dialogue:\nAnn: hi")
    assert pools["headline"].train[0].response.startswith("minister speaks")
    assert {t: p.metric for t, p in pools.items()} == {
        "paraphrase": "exact",
        "data_to_text": "rouge",
        "summarization": "rouge",
        "headline": "rouge",
    }


def test_fedrouter_mix_without_task_prompts_gives_the_authors_raw_inputs(tmp_path):
    dirs = [
        hub_dir(tmp_path / "qqp", {"train": qqp_rows(10), "validation": qqp_rows(3)}),
        hub_dir(tmp_path / "web_nlg", splits(lambda i: {"input": [f"A{i} | b | c", "A | d | e"], "target": f"A{i}."})),
        hub_dir(tmp_path / "samsum", splits(lambda i: {"dialogue": f"Ann: hi {i}", "summary": f"Ann {i}."})),
        hub_dir(tmp_path / "gigaword", splits(lambda i: {"document": f"day {i} news", "summary": f"news {i}"})),
    ]
    prompted = load_pools(compose_local("data=fedrouter_mix", dirs, "scenario=single").data)
    raw = load_pools(compose_local("data=fedrouter_mix", dirs, "scenario=single", "data.task_prompts=false").data)

    def by_response(pools: Any, task: str) -> dict[str, str]:
        return {ex.response: ex.instruction for ex in pools[task].train + pools[task].test}

    # As utils/process_dataset.py of the authors' code: no task prompt, the bare input.
    assert by_response(raw, "data_to_text")["A1."] == "['A1 | b | c', 'A | d | e']"
    assert by_response(raw, "summarization")["Ann 1."] == "Ann: hi 1"
    assert by_response(raw, "headline")["news 1"] == "day 1 news"
    qqp = {ex.instruction for ex in raw["paraphrase"].train + raw["paraphrase"].test}
    assert "How do I 1?-How can I 1?" in qqp
    assert by_response(prompted, "summarization")["Ann 1."] == "Summarize the dialogue:\nAnn: hi 1"
    # Same rows and answers either way, only the instructions differ.
    for task in raw:
        assert sorted(ex.response for ex in raw[task].train) == sorted(ex.response for ex in prompted[task].train)


def dolly_rows(categories: list[str], n: int) -> list[dict[str, Any]]:
    return [
        {"instruction": f"{c} instruction {i}", "context": "some context" if i % 2 else "", "response": f"{c} {i}",
         "category": c}
        for c in categories
        for i in range(n)
    ]  # fmt: skip


def test_dolly_uses_categories_as_tasks(tmp_path):
    raw = compose_config(["data=dolly"])
    categories = list(raw.data.tasks)
    assert len(categories) == 8
    path = hub_dir(tmp_path / "dolly", {"train": dolly_rows(categories, 5)}, fmt="jsonl")
    cfg = compose_local("data=dolly", [path])
    pools = load_pools(cfg.data)
    assert list(pools) == categories
    rows = pools["closed_qa"].train + pools["closed_qa"].test
    assert len(rows) == 5 and len(pools["closed_qa"].test) == 1  # 20% held out, no test split on the hub
    assert {ex.instruction for ex in rows} >= {"closed_qa instruction 1\n\nsome context", "closed_qa instruction 0"}


def test_flan_reads_its_task_column(tmp_path):
    raw = compose_config(["data=flan"])
    tasks = list(raw.data.tasks)
    rows = {s: [{"inputs": f"{t} input {i}", "targets": f"{t} target {i}", "task": t} for t in [*tasks, "other"]
                for i in range(n)] for s, n in (("train", 6), ("validation", 2))}  # fmt: skip
    cfg = compose_local("data=flan", [hub_dir(tmp_path / "flan", rows)], "num_clients=8", "scenario=single")
    pools = load_pools(cfg.data)
    assert list(pools) == tasks and all(p.metric == "rouge" for p in pools.values())
    assert len(pools["snli"].train) == 6 and len(pools["snli"].test) == 2


def test_an_unreachable_hub_is_one_clear_error_when_the_data_is_first_loaded(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    raw = compose_config(["data=dolly"])
    raw.data.tables[0].path = "no-such-owner/no-such-dataset"
    cfg = build_run_config(raw)  # composing and validating reads nothing
    with pytest.raises(DataError, match=r"hub dataset 'no-such-owner/no-such-dataset' split 'train': cannot load it"):
        load_pools(cfg.data)


def test_missing_hub_columns_name_the_dataset(tmp_path):
    path = hub_dir(tmp_path / "qqp", {"train": [{"question1": "a", "label": 1}] * 3})
    raw = compose_config(["data=fedrouter_mix", "data.tasks=[paraphrase]", "scenario=single"])
    OmegaConf.set_struct(raw, False)
    raw.data.tables = [OmegaConf.merge(raw.data.tables[0], {"path": str(path), "config": None, "test_split": None})]
    with pytest.raises(DataError, match=r"split 'train': missing column\(s\) 'question2'"):
        load_pools(build_run_config(raw).data)
