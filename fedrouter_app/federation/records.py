"""What travels in messages: record names, LoRA tensors in ArrayRecords, and checks.

An adapter travels packed, as an ``ArrayRecord`` of ONE float32 1-D array:
every LoRA tensor flattened and concatenated in sorted key order. Flower 1.41
moves each Array of a message as its own object (one request per hop), so a
message's start-up time grows with its number of arrays; packed, an adapter
costs one. Both ends know the adapter template (key -> shape), so the layout
needs no metadata; the array's key, ``lora.<layout>``, names a fingerprint of
the template's keys and shapes, so an adapter packed for another layout (say
the ``B`` half instead of the ``A`` half) is refused even when its length fits.
Everything that arrives from a client is checked against the expected adapter
template before it is used: key, dtype and length are read from the array
metadata before any bytes are decoded, and decoded values must be finite.
Adapters a client keeps in its own ``context.state`` (which never travels as
separate objects) stay one array per tensor (:func:`local_adapter_record`).
Arrays are decoded with ``allow_pickle=False``; nothing received is evaluated.
A reply's size is bounded before anything in it is decoded (:func:`held_bytes`),
and a payload that does not decode (another serialization type, damaged bytes,
an object array) is an invalid reply, not a crash.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedrouter_app.model.lora import LoraState, LoraTemplate

# Names of records inside a message's RecordDict.
CONFIG = "config"
METRICS = "metrics"
ADAPTER = "adapter"
# Cluster centroids a client registers (FedRouter's registration reply; registration attacks poison it).
CENTROIDS = "centroids"

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


# Key prefix of the one packed array of an adapter record (see :func:`packed_key`).
PACKED_PREFIX = "lora."


def packed_order(template: Mapping[str, Sequence[int]]) -> list[str]:
    """The order in which an adapter's tensors are packed: sorted keys (identical on every end)."""
    return sorted(template)


def packed_key(template: Mapping[str, Sequence[int]]) -> str:
    """``lora.<fingerprint>``: the key of an adapter record packed for ``template`` (its keys and shapes)."""
    layout = "\n".join(f"{key}:{','.join(str(int(d)) for d in template[key])}" for key in packed_order(template))
    return PACKED_PREFIX + hashlib.blake2b(layout.encode(), digest_size=8).hexdigest()


def packed_size(template: Mapping[str, Sequence[int]]) -> int:
    """Number of float32 values in an adapter packed for ``template``."""
    return sum(math.prod(shape) for shape in template.values())


def adapter_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An adapter as it travels: one float32 array of every tensor, flattened in sorted key order.

    Its key (:func:`packed_key`) names the layout of ``state``'s keys and shapes.
    """
    order = packed_order(state)
    parts = [np.asarray(state[key], dtype=np.float32).reshape(-1) for key in order]
    packed = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    key = packed_key({key: np.shape(state[key]) for key in order})
    return ArrayRecord({key: Array(np.ascontiguousarray(packed))})


def read_adapter(record: ArrayRecord, template: LoraTemplate) -> LoraState:
    """Decode and check a packed adapter (:func:`adapter_record`) against ``template``.

    The tensors come back in ``template``'s order, as views of one decoded,
    writable buffer: each tensor is its own slice, so writing to one leaves
    the others alone.

    Raises
    ------
    InvalidReplyError
        On a record that is not one array packed for ``template``'s keys and
        shapes, a dtype other than float32, a wrong length, or non-finite values.
    """
    expected = packed_key(template)
    if list(record.keys()) != [expected]:
        keys = sorted(record.keys())
        if len(keys) == 1 and keys[0].startswith(PACKED_PREFIX):
            reason = f"was packed for another layout of LoRA tensors ({keys[0]!r}, expected {expected!r})"
        else:
            reason = f"holds arrays {[k[:60] for k in keys[:3]]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        raise InvalidReplyError(
            f"adapter record {reason}; an adapter is one packed float32 array {expected!r} "
            f"of the template's {len(template)} tensors"
        )
    array = record[expected]
    size = packed_size(template)
    if array.dtype != "float32":
        raise InvalidReplyError(f"packed adapter has dtype {array.dtype}, expected float32")
    if tuple(array.shape) != (size,):
        raise InvalidReplyError(f"packed adapter has shape {tuple(array.shape)}, expected ({size},)")
    value = decode(array, "packed adapter")
    if value.dtype != np.float32 or value.shape != (size,):
        raise InvalidReplyError("packed adapter does not decode to its declared dtype and shape")
    if not np.isfinite(value).all():
        bad = int((~np.isfinite(value)).sum())
        raise InvalidReplyError(f"packed adapter has {bad} non-finite values")
    offsets: dict[str, int] = {}
    offset = 0
    for key in packed_order(template):
        offsets[key] = offset
        offset += math.prod(template[key])
    return {
        key: value[offsets[key] : offsets[key] + math.prod(shape)].reshape(tuple(shape))
        for key, shape in template.items()
    }


def local_adapter_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An adapter kept in a client's own ``context.state``: one float32 array per tensor, keyed by name.

    Never sent in a message (see :func:`adapter_record`); the per-tensor form
    keeps client checkpoints (:mod:`fedrouter_app.federation.checkpoint`) as they were.
    """
    return ArrayRecord({key: Array(np.ascontiguousarray(value, dtype=np.float32)) for key, value in state.items()})


def read_local_adapter(record: ArrayRecord, template: LoraTemplate) -> LoraState:
    """Decode and check an adapter written by :func:`local_adapter_record` against ``template``.

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
