"""What travels in messages: record names, LoRA tensors in ArrayRecords, and checks.

Adapters travel as an ``ArrayRecord`` keyed by peft parameter name, float32.
Everything that arrives from a client is checked against the expected adapter
template before it is used: key set, dtype and shape are read from the array
metadata before any bytes are decoded, and decoded values must be finite.
Arrays are decoded with ``allow_pickle=False``; nothing received is evaluated.
A reply's size is bounded before anything in it is decoded (:func:`held_bytes`),
and a payload that does not decode (another serialization type, damaged bytes,
an object array) is an invalid reply, not a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedrouter_app.model.lora import LoraState, LoraTemplate

# Names of records inside a message's RecordDict.
CONFIG = "config"
METRICS = "metrics"
ADAPTER = "adapter"

# Metric keys every reply carries.
CLIENT_ID = "partition-id"
NUM_EXAMPLES = "num-examples"


# Largest count a client may report (examples, cluster sizes): a weight beyond this could overflow a float64 sum.
MAX_COUNT = 2**53


class InvalidReplyError(ValueError):
    """A client reply that cannot be used; the message says why."""


def decode(array: Array, what: str) -> np.ndarray:
    """``array`` as NumPy (``allow_pickle=False``); :class:`InvalidReplyError` if it does not decode."""
    try:
        return array.numpy()
    except (ValueError, TypeError, OSError, EOFError) as err:
        raise InvalidReplyError(f"{what} does not decode: {type(err).__name__}: {str(err)[:120]}") from None


def adapter_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` of float32 LoRA tensors keyed by parameter name."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value, dtype=np.float32)) for key, value in state.items()})


def read_adapter(record: ArrayRecord, template: LoraTemplate) -> LoraState:
    """Decode and check an adapter against ``template``.

    Raises
    ------
    InvalidReplyError
        On missing or unexpected keys, a dtype other than float32, a wrong
        shape, or non-finite values.
    """
    if record.keys() != template.keys():
        missing = sorted(template.keys() - record.keys())
        extra = sorted(record.keys() - template.keys())
        raise InvalidReplyError(
            f"adapter keys differ from the template: {len(missing)} missing {missing[:2]}, "
            f"{len(extra)} unexpected {extra[:2]}"
        )
    state: LoraState = {}
    for key, shape in template.items():
        array = record[key]
        if array.dtype != "float32":
            raise InvalidReplyError(f"adapter tensor {key} has dtype {array.dtype}, expected float32")
        if tuple(array.shape) != tuple(shape):
            raise InvalidReplyError(f"adapter tensor {key} has shape {tuple(array.shape)}, expected {tuple(shape)}")
        value = decode(array, f"adapter tensor {key}")
        if value.dtype != np.float32 or value.shape != tuple(shape):
            raise InvalidReplyError(f"adapter tensor {key} does not decode to its declared dtype and shape")
        if not np.isfinite(value).all():
            raise InvalidReplyError(f"adapter tensor {key} has non-finite values")
        state[key] = value
    return state


def read_matrix(record: ArrayRecord, key: str, *, max_rows: int, cols: int) -> np.ndarray:
    """Decode a float32 matrix with at most ``max_rows`` rows of ``cols`` finite values."""
    if key not in record:
        raise InvalidReplyError(f"reply has no array {key!r}")
    array = record[key]
    shape = tuple(array.shape)
    if array.dtype != "float32" or len(shape) != 2 or not 1 <= shape[0] <= max_rows or shape[1] != cols:
        raise InvalidReplyError(
            f"array {key!r} has dtype {array.dtype} and shape {shape}; "
            f"expected float32 with 1..{max_rows} rows of {cols}"
        )
    value = decode(array, f"array {key!r}")
    if value.shape != shape or value.dtype != np.float32:
        raise InvalidReplyError(f"array {key!r} does not decode to its declared dtype and shape")
    if not np.isfinite(value).all():
        raise InvalidReplyError(f"array {key!r} has non-finite values")
    return value


def matrix_record(key: str, value: np.ndarray) -> ArrayRecord:
    """An ``ArrayRecord`` holding one float32 matrix."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value, dtype=np.float32))})


def tensor_bytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in a record, from array metadata (no decoding).

    An array whose metadata makes no sense (an unknown dtype, a negative
    dimension: only a broken or hostile client sends one) counts the bytes it holds.
    """
    total = 0
    for array in record.values():
        try:
            size = math.prod(array.shape) * np.dtype(array.dtype).itemsize
        except (TypeError, ValueError):
            size = -1
        total += size if size >= 0 else len(array.data)
    return total


def held_bytes(content: RecordDict) -> int:
    """Bytes of array payload a message actually holds (serialized, headers included).

    Counted from the byte strings themselves, not from the shapes a sender
    declares, so a reply cannot understate its size; nothing is decoded.
    """
    return sum(len(array.data) for record in content.array_records.values() for array in record.values())


def read_count(metrics: Mapping[str, float], key: str, *, minimum: int = 0) -> int:
    """An integer count in ``[minimum, MAX_COUNT]`` from checked reply metrics."""
    value = metrics.get(key)
    if value is None or not minimum <= value <= MAX_COUNT or value != int(value):
        raise InvalidReplyError(f"metric {key!r} must be an integer in [{minimum}, 2**53], got {value!r}")
    return int(value)


def wire_bytes(records: Mapping[str, object]) -> int:
    """Serialized size of every ArrayRecord in a RecordDict (tensor data, headers, keys)."""
    return sum(r.count_bytes() for r in records.values() if isinstance(r, ArrayRecord))


def finite_metrics(record: MetricRecord, where: str) -> dict[str, float]:
    """A MetricRecord as a dict of finite scalars (lists are rejected)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            number = math.nan  # lists, and ints too large for a float
        if isinstance(value, (list, bool)) or not math.isfinite(number):
            raise InvalidReplyError(f"{where} metric {key!r} is not a finite scalar: {str(value)[:40]}")
        out[key] = number
    return out


# Per-task evaluation metrics (``[<view>/]task.<task>.<metric>``) and the range each must lie in.
_TASK_METRIC_RANGES = {
    "n": (0.0, float(MAX_COUNT)),
    "loss": (0.0, math.inf),
    "exact_match": (0.0, 1.0),
    "rouge1": (0.0, 1.0),
    "rougeL": (0.0, 1.0),
    "score": (0.0, 1.0),
    "own": (0.0, 1.0),
}


def check_evaluation_metrics(metrics: Mapping[str, float], tasks: Sequence[str]) -> None:
    """Check the per-task metrics of an evaluation reply before they are pooled into results.

    Every key naming a task must be ``[<view>/]task.<task>.<metric>`` with a
    task of the run, a known metric and a value in that metric's range, so a
    broken client can neither crash the results writer nor pull a reported
    mean outside what a real score can be.
    """
    for key, value in metrics.items():
        if "task." not in key:
            continue
        view, _, rest = key.rpartition("/")
        task, _, metric = rest.removeprefix("task.").rpartition(".")
        if not rest.startswith("task.") or "/" in view or task not in tasks or metric not in _TASK_METRIC_RANGES:
            raise InvalidReplyError(f"evaluation metric {key[:80]!r} is not [<view>/]task.<task>.<metric> of this run")
        low, high = _TASK_METRIC_RANGES[metric]
        if not low <= value <= high or (metric == "n" and value != int(value)):
            raise InvalidReplyError(f"evaluation metric {key!r} = {value!r} is outside [{low:g}, {high:g}]")
