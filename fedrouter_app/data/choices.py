"""Closed-answer tasks: the label sets that ``eval.answer_mode=choices`` ranks instead of generating.

A task counts as closed when it is scored by exact match and its training
answers take at most ``eval.max_choices`` distinct values (sentiment labels,
yes/no, a handful of classes). The label set is read from the task's training
pool (a seeded prefix of the stream for the unbounded generator), so every
client of a run ranks the same candidates.
"""

from __future__ import annotations

import threading

from fedrouter_app.data.sources import make_source
from fedrouter_app.schema.data import DataSettings

# Training answers read per task of an unbounded source (the generator) to find its label set.
SAMPLE = 512

_lock = threading.Lock()
_cache: dict[tuple[str, int, int], dict[str, tuple[str, ...]]] = {}


def answer_choices(data: DataSettings, seed: int, max_choices: int) -> dict[str, tuple[str, ...]]:
    """Task -> its sorted candidate answers, for the closed-answer tasks of ``data.tasks`` (cached per process)."""
    key = (repr(data), seed, max_choices)
    with _lock:
        if key not in _cache:
            if len(_cache) > 16:
                _cache.clear()
            _cache[key] = find_choices(data, seed, max_choices)
        return _cache[key]


def find_choices(data: DataSettings, seed: int, max_choices: int) -> dict[str, tuple[str, ...]]:
    """The label set of each closed-answer task (see the module docstring)."""
    source = make_source(data, seed)
    size = getattr(source, "size", None)
    out: dict[str, tuple[str, ...]] = {}
    for task in data.tasks:
        if source.metric(task) != "exact":
            continue
        n = size(task, "train") if size is not None else SAMPLE
        answers: set[str] = set()
        for example in source.examples(task, "train", range(n)):
            answers.add(example.response)
            if len(answers) > max_choices:
                break
        if 2 <= len(answers) <= max_choices:
            out[task] = tuple(sorted(answers))
    return out
