"""Per-example predictions: what a client sends with an evaluation reply, and the server's checks of it.

The per-task means of an evaluation reply say how well a method did; they do
not say on which examples, so no result's mechanism can be inspected later and
no interval can resample test items. When the server asks (:data:`ASK`, in the
evaluation instruction's config, per ``output.save_predictions``) and the
client's own config allows it, the reply also carries, for the main scoring and
for each view, one ``ConfigRecord`` (named :data:`RECORD` or
``RECORD.<view>``) of columns, one entry per test example:

``index`` (int)
    The example's position in the client's test set.
``task`` (str), ``own`` (bool)
    Its task, and whether the client trains on that task.
``score``, ``exact_match``, ``rougeL``, ``loss`` (float)
    Its score under the task's metric (exact match or ROUGE-L), both metrics,
    and the teacher-forced loss of its reference answer.
``prediction``, ``reference``, ``instruction`` (str)
    With ``output.prediction_texts`` on: the answer the method gave (every
    record), the reference answer and the instruction (main record only: a
    view scores the same examples), cut to :data:`TEXT_LIMITS` characters.
``x.<name>`` (int, float, str or bool)
    An annotation a method attaches to each example (e.g. the cluster a sample
    was routed to): :meth:`~fedrouter_app.client.client_env.ClientEnv.evaluate_reply`'s
    ``per_example``.
``also`` (str, main record only, one entry per view)
    Views that scored every example exactly as the main scoring (the same
    score objects: FedRouter's primary router mode is its main scoring); they
    are not sent again.

Flower's ``ConfigRecord`` carries homogeneous lists, so a column is a list.
The server checks every record (:func:`read_predictions`) like every other
part of a reply before anything is written: known columns, their types, one
length no larger than the client's test set, positions inside it, tasks of the
run, scores in range and strings within their limits; a reply that fails is
refused with one line saying why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fedrouter_app.federation.records import InvalidReplyError
from fedrouter_app.logs import get_logger
from fedrouter_app.schema.settings import RunConfig

log = get_logger(__name__)

# Name of the main scoring's record; a view's is RECORD.<view>.
RECORD = "predictions"
# Config key of an evaluation instruction: present (1) when the server wants predictions back.
ASK = "predictions"
# Whether texts go with them (1) or not (0).
ASK_TEXTS = "prediction-texts"
# Longest string of each text column a reply may carry; clients cut theirs to it (the position identifies an
# example exactly; the instruction's start is there to read, not to rebuild the test set).
TEXT_LIMITS = {"instruction": 160, "reference": 500, "prediction": 500}
# Annotations: at most this many per record, names and string values this long.
MAX_ANNOTATIONS = 8
ANNOTATION_TEXT = 64
ANNOTATION_PREFIX = "x."
# Views per reply; rows per record whatever the client claims its test set holds.
MAX_VIEWS = 16
MAX_ROWS = 1 << 16
VIEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NUMBERS = ("score", "exact_match", "rougeL", "loss")
MAIN_TEXTS = ("reference", "instruction")
# Main record only: the views that scored every example exactly as the main scoring (not sent again).
ALSO = "also"


def wanted(cfg: RunConfig, server_round: int) -> bool:
    """Whether the server asks for predictions in ``server_round``'s evaluation (``output.save_predictions``)."""
    mode = cfg.output.save_predictions
    return mode == "all" or (mode == "final" and server_round == cfg.num_rounds)


def with_texts(cfg: RunConfig) -> bool:
    """Whether predictions carry texts (``output.prediction_texts``; ``auto``: not on a node's own data)."""
    mode = cfg.output.prediction_texts
    return mode == "on" or (mode == "auto" and cfg.data.source != "node")


def ask(cfg: RunConfig, server_round: int) -> dict[str, int]:
    """What the server adds to an evaluation instruction's config (nothing when it wants no predictions)."""
    return {ASK: 1, ASK_TEXTS: int(with_texts(cfg))} if wanted(cfg, server_round) else {}


def record_name(view: str) -> str:
    """The record of the main scoring (``view=""``) or of a view."""
    return f"{RECORD}.{view}" if view else RECORD


def view_of(name: str) -> str | None:
    """The view a record name holds predictions of (``""``: the main scoring), None for another record."""
    if name == RECORD:
        return ""
    return name[len(RECORD) + 1 :] if name.startswith(RECORD + ".") else None


def example_rows(
    scores: Sequence[Any], test: Sequence[Any], own_tasks: Sequence[str], metrics: Mapping[str, str]
) -> list[dict[str, Any]] | None:
    """One row per scored example (:class:`~fedrouter_app.ml.evaluation.ExampleScore` against the test set).

    Scores are matched to test examples by position: every method scores the
    client's test set in order. None when they do not line up (another length,
    or another task at some position), as no position could then be trusted.
    """
    if len(scores) != len(test) or any(s.task != ex.task for s, ex in zip(scores, test, strict=True)):
        return None
    own = set(own_tasks)
    return [
        {
            "index": i,
            "task": s.task,
            "own": s.task in own,
            "score": s.exact_match if metrics.get(s.task) == "exact" else s.rougeL,
            "exact_match": s.exact_match,
            "rougeL": s.rougeL,
            "loss": s.loss_sum / max(1, s.tokens),
            "prediction": s.prediction,
            "reference": ex.response,
            "instruction": ex.instruction,
        }
        for i, (s, ex) in enumerate(zip(scores, test, strict=True))
    ]


def prediction_record(
    rows: Sequence[Mapping[str, Any]], annotations: Mapping[str, Sequence[Any]], texts: bool, main: bool
) -> ConfigRecord:
    """The columns of one scoring as a ConfigRecord.

    ``rows``: per example its ``index``, ``task``, ``own``, the numbers of
    :data:`NUMBERS` and, with ``texts``, its texts (the reference and the
    instruction only in the ``main`` record); ``annotations``: name -> one value
    per row.

    Raises
    ------
    ValueError
        On an annotation of another length, of mixed or unsupported types, or
        with a name or value too long to send.
    """
    columns: dict[str, Any] = {
        "index": [int(r["index"]) for r in rows],
        "task": [str(r["task"]) for r in rows],
        "own": [bool(r["own"]) for r in rows],
        **{key: [float(r[key]) for r in rows] for key in NUMBERS},
    }
    if texts:
        for key in ("prediction", *(MAIN_TEXTS if main else ())):
            columns[key] = [str(r[key])[: TEXT_LIMITS[key]] for r in rows]
    if len(annotations) > MAX_ANNOTATIONS:
        raise ValueError(f"per_example has {len(annotations)} annotations, at most {MAX_ANNOTATIONS}")
    for name, values in annotations.items():
        if not VIEW_NAME.fullmatch(name) or len(values) != len(rows):
            raise ValueError(f"per_example annotation {name!r} needs a plain name and one value per test example")
        columns[ANNOTATION_PREFIX + name] = _homogeneous(name, values)
    return ConfigRecord(columns)


def _homogeneous(name: str, values: Sequence[Any]) -> list[Any]:
    """``values`` as one of the list types a ConfigRecord carries (NumPy scalars converted)."""
    plain = [v.item() if hasattr(v, "item") else v for v in values]
    for kind in (bool, int, float, str):
        if all(isinstance(v, kind) and (kind is not int or not isinstance(v, bool)) for v in plain):
            if kind is str and any(len(v) > ANNOTATION_TEXT for v in plain):
                raise ValueError(f"per_example annotation {name!r} has a string over {ANNOTATION_TEXT} characters")
            return list(plain)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in plain):
        return [float(v) for v in plain]
    raise ValueError(f"per_example annotation {name!r} must hold only numbers, only strings or only booleans")


def read_predictions(content: RecordDict, tasks: Sequence[str], test_size: float) -> dict[str, dict[str, list[Any]]]:
    """The prediction records of an evaluation reply, checked: view -> column -> values (``{}`` if none).

    ``test_size``: the test examples the client says it holds (its
    ``num-examples``); no record may have more rows, nor a position outside it.

    Raises
    ------
    InvalidReplyError
        On anything a well-behaved client does not send; the message names the
        record, the column and what is wrong.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    limit = int(min(max(test_size, 0.0), MAX_ROWS))
    known = set(tasks)
    for name, record in content.config_records.items():
        view = view_of(name)
        if view is None:
            continue
        if view and not VIEW_NAME.fullmatch(view):
            raise InvalidReplyError(f"prediction record {name[:80]!r}: the view name is not a plain name")
        if len(out) >= MAX_VIEWS:
            raise InvalidReplyError(f"reply has more than {MAX_VIEWS} prediction records")
        out[view] = _checked(name, record, known, limit)
    if set(out.get("", {}).get(ALSO, [])) & set(out):
        raise InvalidReplyError(f"prediction record {RECORD!r} names a view as identical that has a record of its own")
    return out


def _checked(name: str, record: ConfigRecord, tasks: set[str], limit: int) -> dict[str, list[Any]]:
    where = f"prediction record {name!r}"
    required = ("index", "task", "own", *NUMBERS)
    missing = [key for key in required if key not in record]
    if missing:
        raise InvalidReplyError(f"{where} lacks column(s) {', '.join(missing)}")
    columns: dict[str, list[Any]] = {}
    annotations = 0
    also: list[Any] | None = None
    for key, values in record.items():
        if not isinstance(values, list):
            raise InvalidReplyError(f"{where}: column {key[:40]!r} is not a list")
        if key.startswith(ANNOTATION_PREFIX):
            annotations += 1
            if annotations > MAX_ANNOTATIONS or not VIEW_NAME.fullmatch(key[len(ANNOTATION_PREFIX) :]):
                raise InvalidReplyError(f"{where}: annotation {key[:40]!r} is one too many or not a plain name")
            _check_annotation(where, key, values)
        elif key in TEXT_LIMITS:
            _check_strings(where, key, values, TEXT_LIMITS[key])
        elif key == ALSO and name == RECORD:
            _check_strings(where, key, values, 64)
            if len(values) > MAX_VIEWS or any(not VIEW_NAME.fullmatch(v) for v in values):
                raise InvalidReplyError(f"{where}: column {ALSO!r} must name at most {MAX_VIEWS} views")
            also = values  # one entry per view, not per example: kept out of the length check
            continue
        elif key not in required:
            raise InvalidReplyError(f"{where}: unknown column {key[:40]!r}")
        columns[key] = values
    n = len(columns["index"])
    if not 1 <= n <= limit or any(len(values) != n for values in columns.values()):
        lengths = sorted({len(values) for values in columns.values()})
        raise InvalidReplyError(f"{where}: columns of lengths {lengths[:4]}; expected one length in [1, {limit}]")
    _check_type(where, "index", columns["index"], int)
    if any(not 0 <= i < limit for i in columns["index"]) or len(set(columns["index"])) != n:
        raise InvalidReplyError(f"{where}: positions must be distinct and in [0, {limit})")
    _check_strings(where, "task", columns["task"], 200)
    if unknown := sorted(set(columns["task"]) - tasks):
        raise InvalidReplyError(f"{where}: task {unknown[0][:40]!r} is not a task of this run")
    _check_type(where, "own", columns["own"], bool)
    for key in NUMBERS:
        values = columns[key]
        if any(not isinstance(v, float) for v in values):
            raise InvalidReplyError(f"{where}: column {key!r} must hold floats")
        high = math.inf if key == "loss" else 1.0
        if any(not (0.0 <= v <= high) for v in values):  # NaN fails too
            raise InvalidReplyError(f"{where}: column {key!r} has a value outside [0, {high:g}]")
    if also is not None:
        columns[ALSO] = also
    return columns


def _check_type(where: str, key: str, values: list[Any], kind: type) -> None:
    # bool is an int in Python: an int column must not be booleans, and the reverse.
    if any(not isinstance(v, kind) or (kind is int and isinstance(v, bool)) for v in values):
        raise InvalidReplyError(f"{where}: column {key!r} must hold {kind.__name__}s")


def _check_strings(where: str, key: str, values: list[Any], limit: int) -> None:
    _check_type(where, key, values, str)
    if any(len(v) > limit for v in values):
        raise InvalidReplyError(f"{where}: column {key!r} has a string over {limit} characters")


def _check_annotation(where: str, key: str, values: list[Any]) -> None:
    kinds = {type(v) for v in values}
    if len(kinds) > 1 or not kinds <= {bool, int, float, str}:
        raise InvalidReplyError(f"{where}: annotation {key[:40]!r} must hold values of one type: int, float, str, bool")
    if float in kinds and any(not math.isfinite(v) for v in values):
        raise InvalidReplyError(f"{where}: annotation {key[:40]!r} has a non-finite value")
    if str in kinds and any(len(v) > ANNOTATION_TEXT for v in values):
        raise InvalidReplyError(f"{where}: annotation {key[:40]!r} has a string over {ANNOTATION_TEXT} characters")


def scoring_records(
    scores: Sequence[Any],
    views: Mapping[str, Sequence[Any]],
    per_example: Mapping[str, Sequence[Any]],
    data: Any,
    texts: bool,
) -> dict[str, ConfigRecord]:
    """The records of a client's main scoring and each view (``data``: its :class:`ClientData`).

    ``per_example`` maps ``name`` (main scoring) or ``<view>/name`` to one
    value per test example. A scoring not in test-set order sends nothing
    (logged), as its positions could not be trusted.

    Raises
    ------
    ValueError
        On an annotation naming a view the reply does not have, or one
        :func:`prediction_record` refuses: a method's mistake, not the data's.
    """
    unknown = {key.rpartition("/")[0] for key in per_example} - {"", *views}
    if unknown:
        raise ValueError(f"per_example names view(s) {sorted(unknown)} that the reply does not have")
    notes = {
        view: {name: v for key, v in per_example.items() for where, _, name in [key.rpartition("/")] if where == view}
        for view in ("", *views)
    }
    # A view that scored every example exactly as the main scoring (FedRouter's primary router mode) is not sent
    # twice: the main record names it in ALSO.
    also = [
        view
        for view, view_scores in views.items()
        if len(view_scores) == len(scores)
        and all(a is b for a, b in zip(view_scores, scores, strict=True))
        and (not notes[view] or notes[view] == notes[""])
    ]
    records = {}
    for view, view_scores in {"": scores, **views}.items():
        rows = example_rows(view_scores, data.test, data.tasks, data.metrics)
        if rows is None or view in also:
            if rows is None:
                log.warning("client %d: %r is not scored in test-set order; no predictions", data.partition_id, view)
            continue
        records[record_name(view)] = prediction_record(rows, notes[view], texts, main=not view)
    if also and RECORD in records:
        records[RECORD][ALSO] = also
    return records
