"""What one round's messages produce: validated replies, failures, bytes moved, the round's record.

A :class:`Reply` is what a strategy sees of a client's answer, after every
check (:class:`~fedrouter_app.federation.communicator.Communicator`); a message that gave no usable reply is a
:class:`Failure` of one of :data:`FAILURE_KINDS`; each instruction and its reply is an :class:`Exchange` of
bytes. A round's :class:`RoundRecord` holds them all for the loop's callbacks (:class:`Callback`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flwr.app import RecordDict

from fedrouter_app.model.lora import LoraState, LoraTemplate
from fedrouter_app.schema.settings import RunConfig

if TYPE_CHECKING:
    from fedrouter_app.strategies.base import Strategy


class RunAbortedError(RuntimeError):
    """The run cannot go on (e.g. every client failed); the message says why."""


@dataclass
class Reply:
    """A validated client reply.

    Attributes
    ----------
    client : int
        Partition id of the sender.
    metrics : dict
        The reply's metrics, all finite scalars.
    adapters : dict
        Every adapter in the reply (records named ``adapter`` or
        ``adapter.<name>``), decoded and checked against the run's template.
    content : RecordDict
        The raw content, for records a strategy checks itself.
    """

    client: int
    metrics: dict[str, float]
    adapters: dict[str, LoraState]
    content: RecordDict


# Kinds of failure, as counted per round in the results.
REJECTED = "rejected"  # a reply that arrived but failed a check
CLIENT_ERROR = "client-error"  # the client raised; Flower returned its error
MISSING = "missing"  # no reply in time, or the SuperLink declared the node unavailable
FAILURE_KINDS = (REJECTED, CLIENT_ERROR, MISSING)


@dataclass
class Failure:
    """A message that produced no usable reply."""

    phase: str
    client: int
    reason: str
    node: int = 0  # Flower node id the message went to (0: unknown)
    kind: str = REJECTED


@dataclass
class Exchange:
    """Bytes of one instruction and its reply.

    ``bytes_*`` count tensor data only (what the adapters weigh);
    ``wire_*`` add the serialization headers and keys of the ArrayRecords.
    """

    phase: str
    client: int
    bytes_down: int
    bytes_up: int
    wire_down: int
    wire_up: int


@dataclass
class RoundRecord:
    """What happened in one round, as callbacks see it."""

    server_round: int
    lr: float
    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    traffic: list[Exchange] = field(default_factory=list)
    strategy: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    joined: dict[int, int] = field(default_factory=dict)  # client -> node id, for nodes that (re)joined this round
    # Metrics of the valid replies of a method's own phases (e.g. "query.register"): phase -> client -> metrics.
    queries: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    # Privacy spent so far, per mechanism (fedrouter_app.federation.privacy_accounting); empty when nothing is private.
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Checked per-example predictions of the round's evaluation: client -> view ("" main) -> column -> values.
    predictions: dict[int, dict[str, dict[str, list[Any]]]] = field(default_factory=dict)


class Callback(Protocol):
    """Hooks around the loop (logging, results, checkpoints)."""

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None: ...

    def on_round_end(self, record: RoundRecord) -> None: ...

    def on_run_end(self, strategy: Strategy) -> None: ...
