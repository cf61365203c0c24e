"""Sending instructions and receiving replies: every reply checked before any strategy sees it.

The :class:`Communicator` builds each instruction (the run's shared settings added, an expiry set), sends it
through Flower's grid (:func:`receive`: replies as they arrive), and checks each reply: its size from the bytes
it holds before anything is decoded, its metrics, its adapters, then what the strategy needs. The loop uses it
for training and evaluation, strategies for phases of their own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedrouter_app.compat.flwr_helpers import ErrorCode
from fedrouter_app.federation.records import (
    ADAPTER,
    CLIENT_ID,
    CONFIG,
    METRICS,
    InvalidReplyError,
    finite_metrics,
    held_bytes,
    read_adapter,
    tensor_bytes,
    wire_bytes,
)
from fedrouter_app.logs import get_logger
from fedrouter_app.model.lora import LoraTemplate

if TYPE_CHECKING:
    pass


from fedrouter_app.federation.exchange import CLIENT_ERROR, MISSING, REJECTED, Exchange, Failure, Reply, RoundRecord

log = get_logger(__name__)

HELLO = "query.hello"

CLOSE = "query.close"

# The run's num_clients, in every message's config: clients whose config leaves it to the federation use it.
NUM_CLIENTS = "num-clients"

# How often the loop asks a SuperLink for replies (Flower's own deployment grid waits 3 s between asks).
PULL_INTERVAL = 0.2

# An ask costs the link state time per reply asked for: with more than this many outstanding, asks are spaced
# out in proportion, so that asking costs the same share of the server's time however many are outstanding.
PULL_BATCH = 64

# Seconds an instruction outlives the wait for its reply (Flower's default is 12 hours): covers the time between
# building a message and the start of the wait, and some clock difference between the ServerApp and the SuperLink.
TTL_MARGIN = 30.0


class Communicator:
    """Sends instructions to clients and turns replies into :class:`Reply` objects.

    Strategies use it directly for phases of their own (registration
    queries, post-training phases); the loop uses it for train and evaluate.
    """

    def __init__(
        self, grid: Grid, template: LoraTemplate, timeout: float, max_reply_bytes: int = 0, num_clients: int = 0
    ) -> None:
        self.grid = grid
        self.template = template
        self.timeout = timeout
        # Largest array payload a reply may hold (0: no bound); see Strategy.max_reply_bytes.
        self.max_reply_bytes = max_reply_bytes
        # Partition ids nodes may claim are 0 .. num_clients - 1 (0: any non-negative id).
        self.num_clients = num_clients
        self.node_of: dict[int, int] = {}
        self.connected: set[int] = set()
        # Nodes whose last instruction got no reply (dead or unreachable); another node may take their partition.
        self.lost: set[int] = set()
        self.record: RoundRecord | None = None
        # Settings every message carries (run key and checkpoint round, when checkpoints are on).
        self.common: dict[str, int | float | str] = {}
        self.contacted: set[int] = set()
        # Nodes whose registration failed (bad data, another config): not asked again; a fixed node rejoins
        # under a new node id.
        self.refused: set[int] = set()
        # Failures before the first round's record exists (registration at start), moved into that record.
        self.early_failures: list[Failure] = []

    @property
    def size_config(self) -> dict[str, int]:
        """The run's num_clients for a message's config (nothing when the loop does not know it)."""
        return {NUM_CLIENTS: self.num_clients} if self.num_clients else {}

    @property
    def clients(self) -> list[int]:
        """Registered clients whose node is connected, by partition id."""
        return sorted(c for c, node in self.node_of.items() if node in self.connected)

    def send(
        self,
        message_type: str,
        payloads: Mapping[int, RecordDict],
        config: Mapping[str, int | float | str] | None = None,
    ) -> list[Reply]:
        """Send one payload per client and return the valid replies, in client order.

        Failures and traffic are added to the current round record.
        """
        return sorted(self.stream(message_type, payloads, config), key=lambda reply: reply.client)

    def stream(
        self,
        message_type: str,
        payloads: Mapping[int, RecordDict],
        config: Mapping[str, int | float | str] | None = None,
    ) -> Iterator[Reply]:
        """Send one payload per client and yield the valid replies as they arrive.

        Each reply is validated when it arrives and kept by no one but the
        reader, so a reader that folds it in and drops it holds one reply at a
        time. Failures and traffic are added to the current round record;
        clients that did not answer in time are recorded when the stream ends.
        """
        phase = message_type
        current = {"server-round": self.record.server_round} if self.record is not None else {}
        shared = ConfigRecord({**current, **self.size_config, **self.common, **(config or {})})
        messages, sent = [], {}
        for client, payload in payloads.items():
            content = RecordDict({**payload, CONFIG: _merged_config(payload, shared)})
            messages.append(self.instruction(content, self.node_of[client], message_type))
            # What went down, counted now: the instruction need not be kept for its reply.
            sent[client] = (sum(tensor_bytes(r) for r in content.array_records.values()), wire_bytes(content))
            self.contacted.add(client)
        answered: set[int] = set()
        client_of: dict[str, int] = {}
        for msg in receive(self.grid, messages, self.timeout):
            if not client_of:
                # Replies are matched to instructions by id (set when pushed): the SuperLink itself answers for a
                # node that stopped sending heartbeats, with its own node id as the sender.
                client_of = {m.metadata.message_id: c for m, c in zip(messages, sent, strict=True)}
            client = client_of.get(msg.metadata.reply_to_message_id)
            if client is None or client in answered:
                continue
            answered.add(client)
            node = self.node_of[client]
            self._account(phase, client, sent[client], msg.content if not msg.has_error() else RecordDict())
            if msg.has_error() and msg.error.code == ErrorCode.NODE_UNAVAILABLE:
                self.lost.add(node)
                self.reject(phase, client, f"node unavailable: {msg.error.reason}", node, MISSING)
                continue
            if msg.has_error():
                self.reject(phase, client, f"client error: {error_reason(msg.error.reason)}", node, CLIENT_ERROR)
                continue
            try:
                if msg.metadata.src_node_id != node:
                    raise InvalidReplyError(f"reply comes from node {msg.metadata.src_node_id}, not node {node}")
                reply = self._validate(msg, client)
            except InvalidReplyError as err:
                self.reject(phase, client, str(err), node)
                continue
            self.lost.discard(node)
            if self.record is not None and phase not in ("train", "evaluate", HELLO, CLOSE):
                self.record.queries.setdefault(phase, {})[client] = dict(reply.metrics)
            del msg
            yield reply
        for client in sorted(set(sent) - answered):
            self.lost.add(self.node_of[client])
            self._account(phase, client, sent[client], RecordDict())
            self.reject(phase, client, f"no reply within {self.timeout:g} s", self.node_of[client], MISSING)

    def instruction(self, content: RecordDict, node: int, message_type: str) -> Message:
        """A message for ``node`` that expires when the loop stops waiting for its reply (plus :data:`TTL_MARGIN`).

        A node that is slow to pull it (or comes back late) then never runs a
        phase the server has moved on from: the SuperLink drops it, and the
        node's reply, which may not outlive the instruction, could not be sent.
        """
        return Message(content, dst_node_id=node, message_type=message_type, ttl=self.timeout + TTL_MARGIN)

    def _validate(self, msg: Message, client: int) -> Reply:
        content = msg.content
        # Before anything is decoded: a reply may not hold more than the method can need.
        size = held_bytes(content)
        if self.max_reply_bytes and size > self.max_reply_bytes:
            raise InvalidReplyError(
                f"reply holds {size} bytes of arrays, more than the limit of {self.max_reply_bytes} (max_reply_bytes)"
            )
        if METRICS not in content.metric_records:
            raise InvalidReplyError("reply has no metrics record")
        metrics = finite_metrics(content.metric_records[METRICS], "reply")
        if int(metrics.get(CLIENT_ID, -1)) != client:
            raise InvalidReplyError(
                f"reply claims partition-id {metrics.get(CLIENT_ID)} but node belongs to client {client}"
            )
        adapters = {
            name: read_adapter(record, self.template)
            for name, record in content.array_records.items()
            if name == ADAPTER or name.startswith(ADAPTER + ".")
        }
        return Reply(client=client, metrics=metrics, adapters=adapters, content=content)

    def _account(self, phase: str, client: int, sent: tuple[int, int], received: RecordDict) -> None:
        """Record the bytes of one exchange; ``sent`` is (tensor bytes, wire bytes) of the instruction."""
        if self.record is None:
            return
        self.record.traffic.append(
            Exchange(
                phase=phase,
                client=client,
                bytes_down=sent[0],
                bytes_up=sum(tensor_bytes(r) for r in received.array_records.values()),
                wire_down=sent[1],
                wire_up=wire_bytes(received),
            )
        )

    def reject(self, phase: str, client: int, reason: str, node: int = 0, kind: str = REJECTED) -> None:
        """Record that ``client``'s ``phase`` reply is unusable, why, and what kind of failure it was."""
        log.warning("client %d: %s reply rejected: %s", client, phase, reason)
        failure = Failure(phase=phase, client=client, reason=reason, node=node, kind=kind)
        (self.record.failures if self.record is not None else self.early_failures).append(failure)


def receive(grid: Grid, messages: list[Message], timeout: float) -> Iterator[Message]:
    """Send ``messages`` and yield their replies as they arrive, until all are in or ``timeout`` seconds have passed.

    Flower's grids (the simulation's in-memory one, a SuperLink's) are asked for
    replies every ``pull_interval`` seconds (the in-memory grid's own, else
    :data:`PULL_INTERVAL`; Flower's deployment grid waits 3 s between asks);
    a pull removes the replies from the link state, so a reader that folds each
    reply in and drops it holds the replies of one pull, not of the round.
    With more than :data:`PULL_BATCH` replies outstanding, asks are spaced out
    in proportion (the last replies of a round are asked for at the base
    interval).
    Other grids (the in-process grid of tests and benchmarks) answer through
    their ``send_and_receive``, all at once.
    """
    if not isinstance(grid, Grid):
        yield from grid.send_and_receive(messages, timeout=timeout)
        return
    waiting = set(grid.push_messages(messages))
    interval = getattr(grid, "pull_interval", PULL_INTERVAL)
    deadline = time.monotonic() + timeout
    while waiting:
        received = list(grid.pull_messages(waiting))
        waiting.difference_update(msg.metadata.reply_to_message_id for msg in received)
        yield from received
        del received
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(interval * max(1.0, len(waiting) / PULL_BATCH))


def error_reason(reason: str) -> str:
    """A client's error as one line: Flower's ``<class 'pkg.Error'>:<'message'>`` becomes ``Error: message``."""
    match = re.fullmatch(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>", reason, flags=re.DOTALL)
    text = f"{match.group(1)}: {match.group(2)}" if match else reason
    return " ".join(text.split())


def _merged_config(payload: RecordDict, shared: ConfigRecord) -> ConfigRecord:
    own = payload.config_records.get(CONFIG)
    return ConfigRecord({**shared, **(own or {})})
