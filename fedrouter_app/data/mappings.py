"""Row mappings: from one table row (a dict) to an instruction and a response.

``columns`` renames columns as a table's settings say; the named mappings turn
rows of well-known hub datasets (QQP, WebNLG, SAMSum, Gigaword) into prompts:
with a task prompt before the input ("Summarize the dialogue:", ...) by
default, or, with ``data.task_prompts=false``, the raw input as the FedRouter
authors' code builds it (``utils/process_dataset.py``: QQP's two questions
joined by "-", WebNLG's triples as the text of a Python list, the SAMSum
dialogue, the Gigaword document), so the model must tell the task from the
input's shape. Every mapping declares the columns it reads, so a missing
column is reported once per table, with the columns that are there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedrouter_app.data.errors import DataError
from fedrouter_app.schema.data import TableSettings

Row = Mapping[str, Any]


@dataclass(frozen=True)
class RowMapping:
    """How rows of one table become (task, instruction, response).

    Attributes
    ----------
    columns : tuple of str
        Columns every row must have.
    convert : callable
        Row -> (instruction, response); either may be empty, and such rows are skipped.
    task_of : callable
        Row -> task name.
    """

    columns: tuple[str, ...]
    convert: Callable[[Row], tuple[str, str]]
    task_of: Callable[[Row], str]


def text(value: Any) -> str:
    """A cell as text: lists (e.g. several references) give their first item, None gives ''."""
    if isinstance(value, list | tuple):
        return text(value[0]) if value else ""
    return "" if value is None else str(value).strip()


def _qqp(row: Row, prompts: bool) -> tuple[str, str]:
    # GLUE QQP: label 1 = duplicate, 0 = not; -1 marks the unlabelled test split.
    label = int(row["label"])
    answer = {1: "yes", 0: "no"}.get(label, "")
    if not prompts:
        return f"{text(row['question1'])}-{text(row['question2'])}", answer
    prompt = f"Do these two questions ask the same thing?\nQuestion 1: {text(row['question1'])}\n"
    return prompt + f"Question 2: {text(row['question2'])}", answer


def _web_nlg(row: Row, prompts: bool) -> tuple[str, str]:
    # GEM/web_nlg: `input` is a list of "subject | predicate | object" triples, `target` one reference.
    triples = [text(t) for t in (row["input"] if isinstance(row["input"], list | tuple) else [row["input"]])]
    if not prompts:
        return str(triples), text(row["target"])  # the authors' code: str() of the list
    return "Describe these facts in one sentence:\n" + "\n".join(triples), text(row["target"])


def _samsum(row: Row, prompts: bool) -> tuple[str, str]:
    return ("Summarize the dialogue:\n" if prompts else "") + text(row["dialogue"]), text(row["summary"])


def _gigaword(row: Row, prompts: bool) -> tuple[str, str]:
    return ("Write a headline for the article:\n" if prompts else "") + text(row["document"]), text(row["summary"])


# Named mappings: name -> (columns read, converter(row, task_prompts)). `columns` is built from the table settings.
NAMED: dict[str, tuple[tuple[str, ...], Callable[[Row, bool], tuple[str, str]]]] = {
    "qqp": (("question1", "question2", "label"), _qqp),
    "web_nlg": (("input", "target"), _web_nlg),
    "samsum": (("dialogue", "summary"), _samsum),
    "gigaword": (("document", "summary"), _gigaword),
}


def row_mapping(table: TableSettings, task_prompts: bool = True) -> RowMapping:
    """The mapping a table's settings describe.

    ``task_prompts`` (``data.task_prompts``) false makes the named mappings give
    raw inputs, without their task prompt; a table's own ``prefix`` stays.
    """
    if table.task_field is not None:
        field = table.task_field

        def task_of(row: Row) -> str:
            return text(row[field])

        task_columns: tuple[str, ...] = (field,)
    else:
        fixed = str(table.task)

        def task_of(row: Row) -> str:
            return fixed

        task_columns = ()
    if table.mapping == "columns":
        wanted = (table.instruction_field, *((table.context_field,) if table.context_field else ()))

        def convert(row: Row) -> tuple[str, str]:
            parts = [text(row[c]) for c in wanted]
            instruction = "\n\n".join(p for p in parts if p) if parts[0] else ""
            return instruction, text(row[table.response_field])

        columns = (*wanted, table.response_field)
    elif table.mapping in NAMED:
        columns, named = NAMED[table.mapping]

        def convert(row: Row) -> tuple[str, str]:
            return named(row, task_prompts)

    else:
        raise DataError(
            f"data.tables ({table.path}): unknown mapping {table.mapping!r}; valid choices: "
            + ", ".join(["columns", *sorted(NAMED)])
        )
    if table.prefix:
        inner = convert

        def convert(row: Row) -> tuple[str, str]:
            instruction, response = inner(row)
            return (table.prefix + instruction if instruction else ""), response

    return RowMapping(columns=(*task_columns, *columns), convert=convert, task_of=task_of)


def check_columns(mapping: RowMapping, present: list[str] | tuple[str, ...], origin: str) -> None:
    """Raise :class:`DataError` naming ``origin`` when a column the mapping reads is absent."""
    missing = [c for c in mapping.columns if c not in present]
    if missing:
        raise DataError(
            f"{origin}: missing column(s) {', '.join(map(repr, missing))}; columns present: "
            f"{', '.join(present) or '(none)'} (set the table's task_field/instruction_field/response_field)"
        )
