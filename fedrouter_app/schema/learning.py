"""Settings of local training, evaluation and their speed paths (``train``, ``eval``, ``speed``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedrouter_app.schema.checks import one_of, require


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
            "and greedy generation, or, under eval.answer_mode=choices, every candidate answer (a pass over the "
            "prompt for each otherwise)."
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
