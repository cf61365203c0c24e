"""What travels in messages: record names, LoRA tensors in ArrayRecords, and checks.

Adapters travel as an ``ArrayRecord`` keyed by peft parameter name, float32.
Everything that arrives from a client is checked against the expected adapter
template before it is used: key set, dtype and shape are read from the array
metadata before any bytes are decoded, and decoded values must be finite.
Arrays are decoded with ``allow_pickle=False``; nothing received is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

from fedrouter_app.model.lora import LoraState, LoraTemplate

# Names of records inside a message's RecordDict.
CONFIG = "config"
METRICS = "metrics"
ADAPTER = "adapter"

# Metric keys every reply carries.
CLIENT_ID = "partition-id"
NUM_EXAMPLES = "num-examples"


class InvalidReplyError(ValueError):
    """A client reply that cannot be used; the message says why."""


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
        value = array.numpy()
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
    value = array.numpy()
    if value.shape != shape or value.dtype != np.float32:
        raise InvalidReplyError(f"array {key!r} does not decode to its declared dtype and shape")
    if not np.isfinite(value).all():
        raise InvalidReplyError(f"array {key!r} has non-finite values")
    return value


def matrix_record(key: str, value: np.ndarray) -> ArrayRecord:
    """An ``ArrayRecord`` holding one float32 matrix."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value, dtype=np.float32))})


def tensor_bytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in a record, from array metadata (no decoding)."""
    return sum(math.prod(array.shape) * np.dtype(array.dtype).itemsize for array in record.values())


def wire_bytes(records: Mapping[str, object]) -> int:
    """Serialized size of every ArrayRecord in a RecordDict (tensor data, headers, keys)."""
    return sum(r.count_bytes() for r in records.values() if isinstance(r, ArrayRecord))


def finite_metrics(record: MetricRecord, where: str) -> dict[str, float]:
    """A MetricRecord as a dict of finite scalars (lists are rejected)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, list) or not math.isfinite(float(value)):
            raise InvalidReplyError(f"{where} metric {key!r} is not a finite scalar: {value!r}")
        out[key] = float(value)
    return out
