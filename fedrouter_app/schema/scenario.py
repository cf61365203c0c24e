"""Settings of how tasks are dealt out to clients (``scenario``, ``scenario.drift``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedrouter_app.schema.checks import one_of, require
from fedrouter_app.schema.metadata import NEUTRAL


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
            NEUTRAL: None,
            "help": "Test items per task in each reported cell, dealt over that cell's clients: a task's holders "
            "share this many between them (own-task scores), the other clients this many (other clients' tasks), "
            "every client this many where no client trains the task (held-out tasks); so every cell rests on at "
            "least this many items whatever the split. null: test_examples_per_task per client and task.",
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
            NEUTRAL: 1,
            "help": "window: this many consecutive clients share each task window (client i holds the window that "
            "starts at training task i // clients_per_window), so every trained task has several holders: 2 with "
            "tasks_per_client=1 is the FedRouter paper's split (one task per client, two clients per task).",
        },
    )
    shares: str = field(
        default="even",
        metadata={
            NEUTRAL: "even",
            "help": "window: how a client's training examples are split over its tasks: 'even' (equal shares) or "
            "'pool' (in proportion to the size of each task's training pool, as the FedRouter authors' splits do; "
            "sources with finite pools only: files, hub, bigbench, packaged).",
        },
    )
    drift: DriftSettings | None = field(
        default=None,
        metadata={
            NEUTRAL: None,
            "help": "Data drift during the run (scenario=drift): who switches tasks, when; null: none.",
        },
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
