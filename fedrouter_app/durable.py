"""Writes that outlast a crash: contents reach the disk before a rename makes them current, then the rename does.

A rename alone makes a write atomic for readers, but after a power cut or a
kernel crash the file system may hold the new name over contents that never
reached the disk, or have lost the rename. Each helper here syncs the
contents before the rename and the folder after it: a run's checkpoints,
``results.json`` and each round appended to ``rounds.jsonl`` are on disk once
the call returns. A sync costs one disk flush per file, paid once per round or
checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def sync_file(path: Path) -> None:
    """Flush ``path``'s contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: Path) -> None:
    """Flush ``path``'s entries (names created, renamed or removed in it) to the disk, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        # Some systems (Windows) cannot open a folder: there a rename is as durable as the system makes it.
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some file systems (network ones) refuse to sync a folder; the contents are synced all the same.
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, atomically and durably (a reader or a crash never sees half a file)."""
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    sync_folder(path.parent)


def replace_file(tmp: Path, path: Path) -> None:
    """Make the written and closed file ``tmp`` the new ``path``, durably."""
    sync_file(tmp)
    os.replace(tmp, path)
    sync_folder(path.parent)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing) and flush it to the disk before returning."""
    created = not path.exists()
    with path.open("a", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    if created:
        sync_folder(path.parent)


def replace_folder(tmp: Path, target: Path) -> None:
    """Make the written folder ``tmp`` the new ``target``, durably; an existing ``target`` is kept until then.

    The files directly in ``tmp`` are synced, then ``tmp`` is renamed. An
    existing ``target`` is first moved aside, not deleted, so that a crash at
    any point leaves either the old or the new folder under a readable name
    (or the old one beside it, named ``.<target>.old``).
    """
    for child in tmp.iterdir():
        if child.is_file():
            sync_file(child)
    sync_folder(tmp)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    sync_folder(target.parent)
    shutil.rmtree(old, ignore_errors=True)
