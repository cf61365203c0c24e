"""The shared round loop: one for every method.

Per round: sample clients, ask the strategy for each client's payload, add the
round's shared settings, send, validate the replies as they arrive, hand the
valid ones to the strategy (one by one as they come when it folds them in,
:meth:`~strategies.base.Strategy.folds_replies`, so the server does not hold
the round's replies; else all at once, in client order), evaluate when due,
and report to callbacks (logging, results, checkpoints). Every client reply is
checked before a strategy sees it: its size (from the bytes it holds, before
anything is decoded), its metrics, its adapters, then what the strategy
needs. Bad or missing replies are recorded
with their reason and kind (:class:`Failure`), counted per round, and never
reach an aggregate; the run goes on.

Clients are known by partition id. A ``query.hello`` message at the start maps
Flower node ids to partition ids and checks that every node composed the same
configuration as the server. Every message carries ``num_clients``
(:data:`NUM_CLIENTS`): where the run leaves it to the federation, the server
counts the nodes (:func:`count_nodes`) and clients take the count from there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedrouter_app import predictions
from fedrouter_app.checkpoint import CHECKPOINT_ROUND, RUN_KEY, last_checkpoint_round
from fedrouter_app.logs import get_logger
from fedrouter_app.model.lora import LoraState, LoraTemplate
from fedrouter_app.records import (
    ADAPTER,
    CLIENT_ID,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    InvalidReplyError,
    check_evaluation_metrics,
    finite_metrics,
    held_bytes,
    read_adapter,
    read_count,
    tensor_bytes,
    wire_bytes,
)
from fedrouter_app.run_command import DEPLOYMENT, SIMULATION, runtime_of
from fedrouter_app.seeding import numpy_rng
from fedrouter_app.settings import RunConfig
from fedrouter_app.training import learning_rate

if TYPE_CHECKING:
    from fedrouter_app.strategies.base import Strategy

log = get_logger(__name__)

HELLO = "query.hello"
CLOSE = "query.close"
FINGERPRINT = "config-fingerprint"
# The run's num_clients, in every message's config: clients whose config leaves it to the federation use it.
NUM_CLIENTS = "num-clients"
# How long the number of connected nodes must stay the same to count as the federation's size: the simulation
# registers its nodes all at once; SuperNodes started together connect within a few seconds of one another.
SETTLE_SECONDS = {SIMULATION: 1.0, DEPLOYMENT: 5.0}
# How often the loop asks a SuperLink for replies (Flower's own deployment grid waits 3 s between asks).
PULL_INTERVAL = 0.2
# An ask costs the link state time per reply asked for: with more than this many outstanding, asks are spaced
# out in proportion, so that asking costs the same share of the server's time however many are outstanding.
PULL_BATCH = 64
# Seconds an instruction outlives the wait for its reply (Flower's default is 12 hours): covers the time between
# building a message and the start of the wait, and some clock difference between the ServerApp and the SuperLink.
TTL_MARGIN = 30.0
# A registration (hello) that failed is recorded under this client id: the node never said which client it is.
UNKNOWN_CLIENT = -1


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
    # Privacy spent so far, per mechanism (see fedrouter_app.privacy_accounting); empty when nothing is private.
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Checked per-example predictions of the round's evaluation: client -> view ("" main) -> column -> values.
    predictions: dict[int, dict[str, dict[str, list[Any]]]] = field(default_factory=dict)


class Callback(Protocol):
    """Hooks around the loop (logging, results, checkpoints)."""

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None: ...

    def on_round_end(self, record: RoundRecord) -> None: ...

    def on_run_end(self, strategy: Strategy) -> None: ...


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


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Block until ``expected`` nodes are connected; return their ids."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise RunAbortedError(
                f"only {len(nodes)} of num_clients={expected} nodes connected within {timeout:g} s; "
                + missing_nodes_advice(grid, expected)
            )
        time.sleep(0.5)


def count_nodes(grid: Grid, timeout: float) -> int:
    """The number of nodes the federation has: wait for the first, then until no more join for a while.

    Raises
    ------
    RunAbortedError
        When no node connects within ``timeout`` seconds.
    """
    settle = SETTLE_SECONDS[runtime_of(grid)]
    deadline = time.monotonic() + timeout
    count, since = 0, time.monotonic()
    while True:
        now = time.monotonic()
        nodes = len(list(grid.get_node_ids()))
        if nodes != count:
            count, since = nodes, now
        elif count and now - since >= settle:
            return count
        if now > deadline:
            if count:
                return count
            raise RunAbortedError(f"no node connected within {timeout:g} s (node_wait_timeout); start the SuperNodes")
        time.sleep(0.25)


def missing_nodes_advice(grid: Grid, expected: int) -> str:
    """What to do about too few nodes, on the runtime the run is on."""
    if runtime_of(grid) == DEPLOYMENT:
        return (
            f'start a SuperNode for every client (--node-config "partition-id=<i> num-partitions={expected}", '
            "i = 0 .. num_clients - 1) or lower num_clients to the SuperNodes you run"
        )
    return f'give the simulation num_clients nodes (flwr run --federation-config "num-supernodes={expected}")'


def register_clients(comm: Communicator, fingerprint: str) -> None:
    """Say hello to connected nodes not seen before: learn their partition ids, check their config.

    Called at the start and before every round, so nodes that connect late
    (or reconnect with a new node id) join the run.
    """
    comm.connected = set(comm.grid.get_node_ids())
    new = sorted(comm.connected - set(comm.node_of.values()) - comm.refused)
    if not new:
        return
    config = {FINGERPRINT: fingerprint, **comm.size_config}
    messages = [comm.instruction(RecordDict({CONFIG: ConfigRecord(config)}), node, HELLO) for node in new]
    errors = []
    for msg in receive(comm.grid, messages, comm.timeout):
        node = msg.metadata.src_node_id
        if msg.has_error():
            reason = error_reason(msg.error.reason)
            errors.append(reason)
            _refuse(comm, node, reason)
            continue
        try:
            client = _hello_partition(msg, comm.num_clients)
        except InvalidReplyError as err:
            errors.append(f"node {node}: {err}")
            _refuse(comm, node, str(err))
            continue
        previous = comm.node_of.get(client)
        # A node that stopped answering may still be listed for a while (the SuperLink waits for missed
        # heartbeats): a restarted SuperNode with the same partition id takes its place.
        if previous is not None and previous in comm.connected and previous != node and previous not in comm.lost:
            raise RunAbortedError(f"nodes {previous} and {node} both claim partition-id {client}")
        if previous is not None and previous != node:
            log.warning("client %d rejoined on node %d (was node %d)", client, node, previous)
        comm.node_of[client] = node
        comm.lost.discard(node)
        if comm.record is not None:
            comm.record.joined[client] = node
    if errors and not comm.clients:
        raise RunAbortedError(f"no client could start: {errors[0]}")
    for reason in sorted(set(errors)):
        log.warning("a client failed to start: %s", reason)


def _refuse(comm: Communicator, node: int, reason: str) -> None:
    """A node whose registration failed: recorded (client unknown), and not asked again."""
    comm.refused.add(node)
    failure = Failure(phase=HELLO, client=UNKNOWN_CLIENT, reason=reason, node=node, kind=CLIENT_ERROR)
    (comm.record.failures if comm.record is not None else comm.early_failures).append(failure)


def _hello_partition(msg: Message, num_clients: int) -> int:
    """The partition id a hello reply claims, checked."""
    if METRICS not in msg.content.metric_records:
        raise InvalidReplyError("hello reply has no metrics record")
    metrics = finite_metrics(msg.content.metric_records[METRICS], "hello")
    client = read_count(metrics, CLIENT_ID)
    if num_clients and client >= num_clients:
        raise InvalidReplyError(f"hello reply claims partition-id {client}, not in [0, {num_clients})")
    return client


def sample_size(num_clients: int, fraction: float) -> int:
    """How many of ``num_clients`` clients a round samples: ``round(fraction * n)``, at least one."""
    return num_clients if fraction >= 1.0 else max(1, round(fraction * num_clients))


def sample_clients(clients: Sequence[int], fraction: float, seed: int, server_round: int, phase: str) -> list[int]:
    """A sample of :func:`sample_size` clients, seeded by (seed, phase, round)."""
    if fraction >= 1.0:
        return sorted(clients)
    k = sample_size(len(clients), fraction)
    rng = numpy_rng(seed, "sample", phase, server_round)
    return sorted(int(c) for c in rng.choice(sorted(clients), size=k, replace=False))


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    strategy: Strategy,
    fingerprint: str,
    callbacks: Sequence[Callback] = (),
    run_key: str = "",
    resume_after: int | None = None,
) -> None:
    """Run ``strategy`` for ``cfg.num_rounds`` rounds on the connected clients.

    Round 0 (when ``eval.at_start``) only evaluates the initial adapters; the
    strategy's ``setup`` phase is recorded in the first round's record. With
    ``resume_after=k`` the strategy holds the state of a checkpoint after round
    ``k``: there is no setup, and the run goes on from round ``k + 1``.
    ``run_key`` names the run to clients, which keep their state under it.
    """
    limit = strategy.max_reply_bytes()
    comm = Communicator(grid, strategy.template, cfg.round_timeout, max_reply_bytes=limit, num_clients=cfg.num_clients)
    strategy.attach(comm)
    wait_for_nodes(grid, cfg.num_clients, cfg.node_wait_timeout)
    register_clients(comm, fingerprint)
    for cb in callbacks:
        cb.on_run_start(cfg, strategy, strategy.template)
    keeps_client_state = bool(run_key) and cfg.checkpoint.every > 0 and cfg.checkpoint.client_state
    first = 0 if cfg.eval.at_start else 1
    if resume_after is not None:
        first = resume_after + 1
    for server_round in range(first, cfg.num_rounds + 1):
        start = time.perf_counter()
        lr = learning_rate(cfg.train.lr_schedule, cfg.train.lr, cfg.train.lr_min, max(server_round, 1), cfg.num_rounds)
        record = RoundRecord(server_round=server_round, lr=lr if server_round else 0.0)
        record.failures += comm.early_failures
        comm.early_failures = []
        comm.record = record
        if keeps_client_state:
            durable = max(last_checkpoint_round(server_round - 1, cfg.checkpoint.every), resume_after or -1)
            comm.common = {RUN_KEY: run_key, CHECKPOINT_ROUND: durable}
        if server_round == first and resume_after is None:
            _note(record, "setup", strategy.setup(comm, comm.clients))
        if server_round > 0:
            register_clients(comm, fingerprint)
            _train(comm, cfg, strategy, record)
        if server_round == 0 or server_round % cfg.eval.every == 0 or server_round == cfg.num_rounds:
            _evaluate(comm, cfg, strategy, record)
        record.seconds = time.perf_counter() - start
        for cb in callbacks:
            cb.on_round_end(record)
    strategy.finish(comm, comm.clients)
    if keeps_client_state:
        close_clients(comm)
    for cb in callbacks:
        cb.on_run_end(strategy)


def close_clients(comm: Communicator) -> None:
    """Tell clients that got messages that the run is over, so they drop the state they kept for resuming.

    Nodes that answered their last message are waited for as long as for any
    round (a reply that arrives after the run has ended is refused by the
    SuperLink, with an error in its log); nodes that did not are not asked.
    Best effort: a client that misses it keeps a few files under ``checkpoint.client_dir``.
    """
    config = ConfigRecord({**comm.size_config, **comm.common})
    messages = [
        comm.instruction(RecordDict({CONFIG: config}), comm.node_of[c], CLOSE)
        for c in comm.clients
        if c in comm.contacted and comm.node_of[c] not in comm.lost
    ]
    for msg in receive(comm.grid, messages, comm.timeout):
        if msg.has_error():
            log.debug("close: %s", msg.error.reason)


def _round_config(cfg: RunConfig, server_round: int, lr: float) -> dict[str, int | float | str]:
    return {"server-round": server_round, "num-rounds": cfg.num_rounds, "lr": lr}


def _note(record: RoundRecord, phase: str, info: dict[str, Any] | None) -> None:
    if info:
        record.strategy[phase] = info


def _train(comm: Communicator, cfg: RunConfig, strategy: Strategy, record: RoundRecord) -> None:
    r = record.server_round
    sampled = sample_clients(comm.clients, cfg.fraction_train, cfg.seed, r, "train")
    payloads = strategy.configure_train(r, sampled)
    arriving = comm.stream(MessageType.TRAIN, payloads, _round_config(cfg, r, record.lr))
    valid = _checked_train_replies(comm, strategy, record, arriving)
    folds = strategy.folds_replies()
    if not folds:
        valid = iter(sorted(valid, key=lambda reply: reply.client))
    first = next(valid, None)
    if sampled and first is None:
        reasons = "; ".join(sorted({f.reason for f in record.failures}))
        raise RunAbortedError(f"round {r}: no client returned a usable training reply ({reasons})")
    replies: Iterable[Reply] = _prepended(first, valid) if first is not None else ()
    del first  # the reader alone holds what it reads
    _note(record, "train", strategy.aggregate_train(r, replies if folds else list(replies)))
    for reply in valid:
        raise RuntimeError(f"{type(strategy).__name__}.aggregate_train left client {reply.client}'s reply unread")
    record.train = dict(sorted(record.train.items()))


def _prepended(first: Reply, rest: Iterator[Reply]) -> Iterator[Reply]:
    """``first``, then ``rest``, holding ``first`` no longer than the reader does (``itertools.chain`` would)."""
    yield first
    del first
    yield from rest


def _checked_train_replies(
    comm: Communicator, strategy: Strategy, record: RoundRecord, replies: Iterable[Reply]
) -> Iterator[Reply]:
    """The training replies that pass the loop's and the strategy's checks, their metrics recorded."""
    for reply in replies:
        try:
            # Every method's aggregate may weigh by it; a client with no data has nothing to contribute.
            read_count(reply.metrics, NUM_EXAMPLES, minimum=1)
            strategy.check_train_reply(record.server_round, reply)
        except InvalidReplyError as err:
            comm.reject(MessageType.TRAIN, reply.client, str(err))
            continue
        record.train[reply.client] = reply.metrics
        yield reply


def _evaluate(comm: Communicator, cfg: RunConfig, strategy: Strategy, record: RoundRecord) -> None:
    r = record.server_round
    sampled = sample_clients(comm.clients, cfg.fraction_evaluate, cfg.seed, r, "evaluate")
    config = {**_round_config(cfg, r, record.lr), **predictions.ask(cfg, r)}
    replies = comm.send(MessageType.EVALUATE, strategy.configure_evaluate(r, sampled), config)
    valid = []
    for reply in replies:
        try:
            check_evaluation_metrics(reply.metrics, cfg.data.tasks)
            test_size = reply.metrics.get(NUM_EXAMPLES, 0.0)
            checked = predictions.read_predictions(reply.content, cfg.data.tasks, test_size)
            strategy.check_evaluate_reply(r, reply)
        except InvalidReplyError as err:
            comm.reject(MessageType.EVALUATE, reply.client, str(err))
            continue
        valid.append(reply)
        record.evaluate[reply.client] = reply.metrics
        if checked and predictions.wanted(cfg, r):
            record.predictions[reply.client] = checked
    _note(record, "evaluate", strategy.aggregate_evaluate(r, valid))
