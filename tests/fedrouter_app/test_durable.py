"""Durable writes: contents synced before the rename, the folder after it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import fedrouter_app.durable as durable
from fedrouter_app.durable import append_text, replace_folder, write_text

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names synced files through /proc")


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each fsync synced, in order (files and folders by path)."""
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    return calls


def test_write_text_syncs_the_contents_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")
    seen: list[tuple[str, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), target.read_text()))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    # The new contents were on disk while the old file was still current; the rename was synced once made.
    assert seen == [(f"{target}.tmp", "old"), (str(tmp_path), "new")]


def test_append_text_syncs_every_append_and_the_folder_of_a_new_file(tmp_path, synced):
    path = tmp_path / "rounds.jsonl"
    append_text(path, "1\n")
    append_text(path, "2\n")
    assert path.read_text() == "1\n2\n"
    assert synced == [str(path), str(tmp_path), str(path)]


def test_replace_folder_syncs_each_file_then_swaps_the_folders(tmp_path, synced):
    target, tmp = tmp_path / "round-00002", tmp_path / ".round-00002.tmp"
    target.mkdir()
    (target / "state.json").write_text("old")
    tmp.mkdir()
    (tmp / "state.json").write_text("new")
    (tmp / "state.safetensors").write_bytes(b"\0" * 8)
    replace_folder(tmp, target)
    assert (target / "state.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-00002"]  # nothing left aside
    assert sorted(synced[:2]) == [str(tmp / "state.json"), str(tmp / "state.safetensors")]
    assert synced[2:] == [str(tmp), str(tmp_path)]


def test_a_folder_that_cannot_be_synced_does_not_fail_the_write(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_dir():
            raise OSError(22, "Invalid argument")  # what some network file systems answer for a folder
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    write_text(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"
