"""Which nodes take part: waiting for them, counting them, saying hello and goodbye.

A ``query.hello`` message maps Flower node ids to partition ids and checks that every node composed the same
configuration as the server (:func:`register_clients`, also before every round, so late and restarted nodes
join); where the run leaves ``num_clients`` to the federation, the server counts the nodes
(:func:`count_nodes`); at the end, :func:`close_clients` lets clients drop the state kept for resuming.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedrouter_app.federation.records import (
    CLIENT_ID,
    CONFIG,
    METRICS,
    InvalidReplyError,
    finite_metrics,
    read_count,
)
from fedrouter_app.federation.run_command import DEPLOYMENT, SIMULATION, runtime_of
from fedrouter_app.logs import get_logger

if TYPE_CHECKING:
    pass


from fedrouter_app.federation.communicator import CLOSE, HELLO, Communicator, error_reason, receive
from fedrouter_app.federation.exchange import CLIENT_ERROR, Failure, RunAbortedError

log = get_logger(__name__)

FINGERPRINT = "config-fingerprint"

# How long the number of connected nodes must stay the same to count as the federation's size: the simulation
# registers its nodes all at once; SuperNodes started together connect within a few seconds of one another.
SETTLE_SECONDS = {SIMULATION: 1.0, DEPLOYMENT: 5.0}

# A registration (hello) that failed is recorded under this client id: the node never said which client it is.
UNKNOWN_CLIENT = -1


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
