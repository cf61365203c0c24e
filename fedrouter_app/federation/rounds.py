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

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from flwr.app import MessageType
from flwr.serverapp import Grid

from fedrouter_app.federation import predictions
from fedrouter_app.federation.checkpoint import CHECKPOINT_ROUND, RUN_KEY, last_checkpoint_round
from fedrouter_app.federation.records import (
    NUM_EXAMPLES,
    InvalidReplyError,
    check_evaluation_metrics,
    read_count,
)
from fedrouter_app.logs import get_logger
from fedrouter_app.ml.training import learning_rate
from fedrouter_app.schema.settings import RunConfig
from fedrouter_app.seeding import numpy_rng

if TYPE_CHECKING:
    from fedrouter_app.strategies.base import Strategy


from fedrouter_app.federation.communicator import Communicator
from fedrouter_app.federation.exchange import Callback, Reply, RoundRecord, RunAbortedError
from fedrouter_app.federation.nodes import close_clients, register_clients, wait_for_nodes

log = get_logger(__name__)


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
    if fallbacks := strategy.aggregation_fallbacks():
        record.strategy["aggregation_fallbacks"] = fallbacks
        log.warning("round %d: %d aggregate(s) fell back: %s", r, len(fallbacks), "; ".join(sorted(set(fallbacks))))
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
