"""Central differential privacy by Flower's own fixed-clipping DP wrappers, for methods that average one adapter.

Flower 1.41 implements DP-FedAvg (McMahan et al., arXiv 1710.06963) as strategy
wrappers, ``DifferentialPrivacyServerSideFixedClipping`` and
``DifferentialPrivacyClientSideFixedClipping``, around a Flower ``Strategy``,
plus the client mod ``fixedclipping_mod``. Our strategies are not Flower
strategies (see :mod:`strategies.base`), so the wrappers are used as they are
at the one step where they act, aggregation: :func:`dp_mean` turns the round's
validated replies into Flower messages and lets the wrapper, around Flower's
own ``FedAvg``, clip (server mode), average and add the noise. The wrappers'
``configure_train`` is not used (it samples nodes through a Grid; our loop
samples): in client mode the strategy puts the clipping norm into the
instruction's config under Flower's own key, which is all that method adds.

Flower draws the noise from NumPy's global generator; :func:`seeded_numpy`
seeds it from (run seed, round) around the call and restores it, so that a run
is reproducible like every other random choice of the project.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from fedrouter_app.compat.flwr_helpers import KEY_CLIPPING_NORM, get_norm
from fedrouter_app.federation.records import ADAPTER, InvalidReplyError, adapter_record, read_adapter
from fedrouter_app.model.lora import LoraState, LoraTemplate
from fedrouter_app.schema.federation import DPSettings
from fedrouter_app.seeding import derive_seed

__all__ = ["KEY_CLIPPING_NORM", "check_clipped", "dp_mean", "seeded_numpy"]

WEIGHT = "weight"


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator for the duration of the block, then restore its state."""
    saved = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(saved)


def dp_mean(
    settings: DPSettings,
    current: LoraState,
    states: Sequence[LoraState],
    weights: Sequence[float],
    num_sampled: int,
    template: LoraTemplate,
    seed: int,
    server_round: int,
) -> LoraState:
    """The round's mean adapter with Flower's central DP: clipped updates, Gaussian noise on the mean.

    Parameters
    ----------
    settings : DPSettings
        ``mode`` ``server`` (the wrapper clips each update) or ``client``
        (clients clipped with ``fixedclipping_mod``), noise multiplier, clipping norm.
    current : LoraState
        The adapter the clients were sent (updates are replies minus it).
    states, weights : sequences
        Each valid reply's adapter and its aggregation weight.
    num_sampled : int
        Clients sampled this round: the noise's std is ``z * C / num_sampled``.
    """
    inner = FedAvg(arrayrecord_key=ADAPTER, weighted_by_key=WEIGHT)
    z, clip = settings.noise_multiplier, settings.clipping_norm
    if settings.mode == "server":
        wrapper = DifferentialPrivacyServerSideFixedClipping(inner, z, clip, num_sampled)
        wrapper.current_arrays = adapter_record(current)
    else:
        wrapper = DifferentialPrivacyClientSideFixedClipping(inner, z, clip, num_sampled)
    messages = [
        Message(
            RecordDict({ADAPTER: adapter_record(state), "metrics": MetricRecord({WEIGHT: float(weight)})}),
            dst_node_id=0,
            message_type=MessageType.TRAIN,
        )
        for state, weight in zip(states, weights, strict=True)
    ]
    with seeded_numpy(derive_seed(seed, "dp-noise", server_round)):
        arrays, _ = wrapper.aggregate_train(server_round, messages)
    if arrays is None:
        return current
    return read_adapter(arrays, template)


def check_clipped(state: LoraState, sent: LoraState, clipping_norm: float) -> None:
    """In client mode, refuse an update that is longer than the clipping norm (the client did not clip)."""
    norm = get_norm([state[key] - sent[key] for key in sent])
    # float32 rounding after clipping can leave the norm a hair above it.
    if norm > clipping_norm * (1 + 1e-4):
        raise InvalidReplyError(f"update norm {norm:.4g} exceeds dp.clipping_norm={clipping_norm:g}: not clipped")
