"""BIG-bench reader on generated archives shaped like the bigbench sdist (no BIG-bench text in the repository)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from fedrouter_app.config.compose import build_run_config, compose_config
from fedrouter_app.data import bigbench
from fedrouter_app.data.bigbench import extract_tasks, load_task, parse_target
from fedrouter_app.data.errors import DataError
from fedrouter_app.data.tables import load_pools
from fedrouter_app.schema.data import DataSettings, TableSettings

CANARY = "FAKE CANARY: generated for tests"
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"


def fake_task(name: str, n: int = 20) -> dict:
    """A task.json with every target shape the reader must handle."""
    examples = []
    for i in range(n):
        shape = i % 4
        if shape == 0:
            examples.append({"input": f"{name} plain {i}", "target": f"t{i}"})
        elif shape == 1:
            examples.append({"input": f"{name} list {i}", "target": [f"t{i}", "other"]})
        elif shape == 2:
            examples.append({"input": f"{name} literal {i}", "target": f"['t{i}', 'other']"})
        else:
            examples.append({"input": f"{name} scores {i}", "target_scores": {"wrong": 0, f"t{i}": 1, "no": 0.5}})
    return {"canary": CANARY, "name": name, "examples": examples}


def make_archive(path: Path, tasks: list[str], n: int = 20) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        members = {f"{ROOT}/{t}/task.json": json.dumps(fake_task(t, n)).encode() for t in tasks}
        members[f"{ROOT}/README.md"] = b"not a task"
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def settings(tmp_path: Path, archive: Path, tasks: dict[str, str]) -> DataSettings:
    return DataSettings(
        source="bigbench",
        tasks=list(tasks),
        prefix_free=False,
        prompt_template="{instruction}",
        response_template="{response}",
        tables=[TableSettings(path=p, task=t) for t, p in tasks.items()],
        cache_dir=str(tmp_path / "cache"),
        archive=str(archive),
    )


def test_targets_of_every_shape():
    assert parse_target({"target": "Paris"}) == "Paris"
    assert parse_target({"target": ["a", "b"]}) == "a"
    assert parse_target({"target": "['Quantity.', 'Date.']"}) == "Quantity."
    assert parse_target({"target": "[not a literal"}) == "[not a literal"
    assert parse_target({"target_scores": {"x": 0, "y": 1, "z": 1}}) == "y"  # first of the best
    assert parse_target({"target": "12", "target_scores": {"3": 1}}) == "12"


def test_wanted_tasks_are_read_in_one_pass(tmp_path):
    archive = make_archive(tmp_path / "bb.tar.gz", ["alpha", "group/beta", "gamma"])
    found = extract_tasks(archive, ["group/beta", "alpha"])
    assert set(found) == {"alpha", "group/beta"}
    beta = found["group/beta"]
    assert beta["canary"] == CANARY
    assert [ex["target"] for ex in beta["examples"][:4]] == ["t0", "t1", "t2", "t3"]
    with pytest.raises(DataError, match=r"bb\.tar\.gz: no BIG-bench task 'group/betta'; close matches: group/beta"):
        extract_tasks(archive, ["group/betta"])


def test_tasks_are_cached_with_the_canary_and_read_back_without_the_archive(tmp_path):
    archive = make_archive(tmp_path / "bb.tar.gz", ["alpha", "group/beta"])
    cfg = settings(tmp_path, archive, {"a": "alpha", "b": "group/beta"})
    pools = load_pools(cfg)
    assert len(pools["a"].train) == 16 and len(pools["a"].test) == 4
    assert pools["b"].metric == "exact" and str(archive) in pools["b"].origins[0]
    cached = tmp_path / "cache" / "bigbench-1.0.0" / "group__beta.json"
    assert json.loads(cached.read_text())["canary"] == CANARY
    archive.unlink()
    assert load_task(cfg, "group/beta") == json.loads(cached.read_text())


def test_a_folder_of_tasks_reads_like_the_sdist(tmp_path):
    # data.archive may name a clone of the BIG-bench repository: the same task.json files under benchmark_tasks/.
    archive = make_archive(tmp_path / "bb.tar.gz", ["alpha", "group/beta"])
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "clone", filter="data")
    folder = tmp_path / "clone" / "bigbench-1.0.0"
    from_folder = extract_tasks(folder, ["group/beta", "alpha"])
    assert from_folder == extract_tasks(archive, ["group/beta", "alpha"])
    with pytest.raises(DataError, match=r"no BIG-bench task 'gamma'"):
        extract_tasks(folder, ["gamma"])
    pools = load_pools(settings(tmp_path, folder, {"a": "alpha"}))
    assert len(pools["a"].train) == 16


def test_a_named_archive_that_is_missing_or_broken(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.tar\.gz: unreadable file"):
        load_pools(settings(tmp_path, tmp_path / "nowhere.tar.gz", {"a": "alpha"}))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match=r"broken\.tar\.gz: unreadable archive"):
        load_pools(settings(tmp_path, broken, {"a": "alpha"}))


def test_fetching_offline_fails_with_the_command_to_run(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, **kw):
        calls.append(command)
        return SimpleNamespace(returncode=1, stderr="ERROR: No matching distribution found for bigbench==1.0.0\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    cfg = settings(tmp_path, tmp_path / "x", {"a": "alpha"})
    cfg.archive = ""
    with pytest.raises(DataError, match=r"pip download --no-deps bigbench==1\.0\.0.*No matching distribution") as err:
        load_pools(cfg)
    assert "may no longer serve it" in str(err.value) and "set data.archive=" in str(err.value)
    assert "\n" not in str(err.value)
    assert calls == [calls[0]] and calls[0][-3:] == ["bigbench==1.0.0", "-d", str(tmp_path / "cache" / "bigbench")]


def test_fetch_retries_with_an_older_pip_when_the_new_one_refuses_the_sdist(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, **kw):
        commands.append((command, kw.get("env", {}).get("PYTHONPATH")))
        if "download" in command and len(commands) == 1:
            return SimpleNamespace(returncode=1, stderr="ERROR: cannot declare direct URL dependencies.\n")
        if "download" in command:
            make_archive(tmp_path / "dl" / bigbench.SDIST, ["alpha"])
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    bigbench.fetch_archive(tmp_path / "dl")
    assert [c[0][3] for c in commands] == ["download", "install", "download"]
    assert bigbench.LEGACY_PIP in commands[1][0] and commands[2][1] == str(tmp_path / "dl" / "pip-legacy")
    assert (tmp_path / "dl" / bigbench.SDIST).exists()


@pytest.mark.parametrize("preset", ["data=bigbench", "sweep=real"])
def test_the_shipped_configs_read_their_tasks(tmp_path, preset):
    raw = compose_config([preset])
    paths = [t["path"] for t in OmegaConf.to_container(raw.data.tables)]
    raw.data.archive = str(make_archive(tmp_path / "bb.tar.gz", paths, n=40))
    raw.data.cache_dir = str(tmp_path / "cache")
    cfg = build_run_config(raw)
    pools = load_pools(cfg.data)
    assert list(pools) == cfg.data.tasks and len(pools) >= 6
    assert pools["sentiment"].train[0].instruction.startswith("Sentiment (positive/negative")
    if preset == "sweep=real":
        assert cfg.model.source == "gguf" and cfg.num_clients == 6 and cfg.eval.scope == "global"
