"""Aggregation arithmetic on LoRA states.

LoRA ``A`` and ``B`` tensors are averaged separately, key by key, as FedIT and
the methods built on it do (the product ``BA`` is never formed). Sums are
accumulated in float64 and returned as float32. :class:`WeightedMean` adds one
adapter at a time, so a strategy can fold replies in as it reads them and hold
one accumulator per aggregate instead of every reply.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrouter_app.model.lora import LoraState


class WeightedMean:
    """Running weighted mean of adapter states with identical keys and shapes."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] | None = None
        self.total_weight = 0.0
        self.count = 0

    def add(self, state: LoraState, weight: float) -> None:
        """Fold in ``state`` with a finite, non-negative ``weight``."""
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be finite and non-negative, got {weight}")
        if self._sums is None:
            self._sums = {key: np.zeros(value.shape, dtype=np.float64) for key, value in state.items()}
        elif state.keys() != self._sums.keys():
            raise ValueError("adapters to average have different keys")
        for key, value in state.items():
            if value.shape != self._sums[key].shape:
                raise ValueError(f"adapter tensor {key} has shape {value.shape}, expected {self._sums[key].shape}")
            # The product in float64 too: weight * float32 would round in float32 before the sum sees it.
            self._sums[key] += weight * np.asarray(value, dtype=np.float64)
        self.total_weight += weight
        self.count += 1

    def result(self) -> LoraState:
        """The mean so far (float32)."""
        if self._sums is None:
            raise ValueError("cannot average zero adapters")
        if self.total_weight <= 0:
            raise ValueError("weights sum to zero")
        return {key: (value / self.total_weight).astype(np.float32) for key, value in self._sums.items()}


def weighted_average(states: Sequence[LoraState], weights: Sequence[float]) -> LoraState:
    """Key-wise weighted mean ``sum_i w_i * state_i / sum_i w_i`` of adapter states.

    Parameters
    ----------
    states : sequence of LoraState
        Adapters with identical keys and shapes.
    weights : sequence of float
        Finite, non-negative weights with a positive sum.
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} adapters but {len(weights)} weights")
    mean = WeightedMean()
    for state, weight in zip(states, weights, strict=True):
        mean.add(state, float(weight))
    return mean.result()
