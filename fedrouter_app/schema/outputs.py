"""Settings of what a run writes (``output``, ``checkpoint``) and what a report declares (``report``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedrouter_app.schema.checks import one_of, require


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

    mlflow: str = field(
        default="",
        metadata={
            "help": "Also log the run to MLflow (the mlflow extra): a tracking URI (sqlite:///path/mlflow.db, "
            "http://host:5000) or 'local' (sqlite:///<output.dir>/mlflow.db, artifacts beside it); empty: off. "
            "A sweep's jobs become children of one parent run."
        },
    )
    mlflow_experiment: str = field(default="fedrouter", metadata={"help": "MLflow experiment the runs go to."})

    def validate(self) -> None:
        require("/" not in self.run_name, f"output.run_name must be a plain name, got {self.run_name!r}")
        require(bool(self.mlflow_experiment), "output.mlflow_experiment must not be empty")
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
