"""``<run dir>/predictions.jsonl``: every evaluated example of a run, one JSON line each, and its reader.

A line holds one example of one client's evaluation in one round, under one
scoring (``view``: ``""`` for the main one, else the name of a method's
alternative scoring, e.g. FedRouter's ``router-local``)::

    {"round": 4, "client": 3, "view": "", "index": 17, "task": "arithmetic", "own": true,
     "score": 1.0, "exact_match": 1.0, "rougeL": 1.0, "loss": 0.4127,
     "prediction": "12", "reference": "12", "instruction": "What is 5 + 7?", "x": {"route": 2}}

``index`` is the example's position in that client's test set (the same
example in every method of the same seed), ``own`` whether the client trains
on its task, ``score`` its score under the task's metric; the texts are there
when ``output.prediction_texts`` allowed them (reference and instruction on
main-view lines only), ``x`` when the method annotated its examples, and
``also`` on main-view lines when views scored every example of that client
exactly as the main scoring did (FedRouter's primary router mode): those views
are not written again, and reading a view returns these lines.
Lines are appended as each round ends (:class:`PredictionsWriter`), so the
server holds one round's predictions at a time and a run that stops early
keeps what it evaluated; :func:`load_predictions` reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrouter_app.durable import replace_file
from fedrouter_app.federation.predictions import ALSO, ANNOTATION_PREFIX, NUMBERS, TEXT_LIMITS

if TYPE_CHECKING:
    from fedrouter_app.federation.exchange import RoundRecord
    from fedrouter_app.model.lora import LoraTemplate
    from fedrouter_app.schema.settings import RunConfig
    from fedrouter_app.strategies.base import Strategy

PREDICTIONS_FILE = "predictions.jsonl"
# Six decimals: a few bytes a line less than a float's repr, and a task mean moves by at most 5e-7.
DECIMALS = 6


def prediction_lines(server_round: int, client: int, view: str, columns: dict[str, list[Any]]) -> Iterator[str]:
    """The JSON lines of one checked prediction record (see ``predictions.read_predictions``)."""
    texts = [key for key in TEXT_LIMITS if key in columns]
    notes = [key for key in columns if key.startswith(ANNOTATION_PREFIX)]
    for i, index in enumerate(columns["index"]):
        line: dict[str, Any] = {
            "round": server_round,
            "client": client,
            "view": view,
            "index": index,
            "task": columns["task"][i],
            "own": columns["own"][i],
            **{key: round(columns[key][i], DECIMALS) for key in NUMBERS},
            **{key: columns[key][i] for key in texts},
        }
        if notes:
            line["x"] = {key[len(ANNOTATION_PREFIX) :]: columns[key][i] for key in notes}
        if columns.get(ALSO):
            line[ALSO] = columns[ALSO]
        yield json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


class PredictionsWriter:
    """Round-loop callback: appends each round's checked predictions to :data:`PREDICTIONS_FILE` as it ends.

    ``resume_after``: a resumed run keeps the lines of rounds up to that one
    and drops later ones (the rounds it will evaluate again).
    """

    def __init__(self, run_dir: Path, resume_after: int | None = None) -> None:
        self.path = run_dir / PREDICTIONS_FILE
        self.resume_after = resume_after

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        if self.resume_after is not None:
            keep_rounds(self.path, self.resume_after)
        elif cfg.output.save_predictions != "off":
            # Present even if no client sends any: the run asked, and the report can say so.
            self.path.touch()

    def on_round_end(self, record: RoundRecord) -> None:
        if not record.predictions:
            return
        with self.path.open("a", encoding="utf-8") as out:
            for client, views in sorted(record.predictions.items()):
                for view, columns in sorted(views.items()):
                    out.writelines(prediction_lines(record.server_round, client, view, columns))

    def on_run_end(self, strategy: Strategy) -> None:
        pass


def keep_rounds(path: Path, last: int) -> None:
    """Drop the lines of rounds after ``last`` (and a line cut short) from a predictions file, if there is one."""
    if not path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with path.open(encoding="utf-8") as source, tmp.open("w", encoding="utf-8") as out:
        for line in source:
            round_ = _round_of(line)
            if round_ is not None and round_ <= last:
                out.write(line)
    replace_file(tmp, path)


def _round_of(line: str) -> int | None:
    """The round of a line, read from its start where the writer put it (parsed otherwise); None if damaged."""
    head = '{"round":'
    if line.startswith(head):
        number = line[len(head) : line.find(",", len(head))]
        if number.isdigit() and line.endswith("}\n"):
            return int(number)
    try:
        return int(json.loads(line)["round"])
    except (ValueError, KeyError, TypeError):
        return None


def iter_predictions(run_dir: Path, server_round: int | None = None, view: str | None = None) -> Iterator[dict]:
    """The lines of a run's predictions, one dict each, optionally of one round and one view only.

    Lines of other rounds are skipped without being parsed; a last line cut
    short by a stopped run is left out.

    Raises
    ------
    OSError
        If ``run_dir`` has no predictions file.
    ValueError
        If a line other than the last is not JSON.
    """
    path = run_dir / PREDICTIONS_FILE
    with path.open(encoding="utf-8") as lines:
        pending: tuple[int, str] | None = None
        for number, line in enumerate(lines, 1):
            if pending is not None:
                raise ValueError(f"{path}: line {pending[0]} is not a prediction record")
            round_ = _round_of(line)
            if round_ is None:
                pending = (number, line)
                continue
            if server_round is not None and round_ != server_round:
                continue
            entry = json.loads(line)
            if view is None or entry.get("view") == view or view in entry.get(ALSO, ()):
                yield entry


def load_predictions(run_dir: Path, server_round: int | None = None, view: str | None = None) -> list[dict]:
    """A run's predictions as a list of dicts (see :func:`iter_predictions`; of one round and view to save memory)."""
    return list(iter_predictions(run_dir, server_round, view))
