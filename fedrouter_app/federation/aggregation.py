"""Aggregation arithmetic on LoRA states.

LoRA ``A`` and ``B`` tensors are averaged separately, key by key, as FedIT and
the methods built on it do (the product ``BA`` is never formed). :class:`WeightedMean`
adds one adapter at a time, so a strategy can fold replies in as they arrive and
hold one accumulator per aggregate instead of every reply.

Replies arrive in an order that changes from run to run, so the mean must not
depend on it: sums are kept as compensated float64 pairs (Knuth's TwoSum: a sum
and the exact rounding error of every addition), which carry about 100 bits;
the float32 result then equals the exactly rounded mean unless the exact value
lies within about 2^-47 of a float32 rounding boundary, so two orders give the
same bits in practice. Total weights are summed exactly (``math.fsum``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedrouter_app.model.lora import LoraState


class WeightedMean:
    """Running weighted mean of adapter states with identical keys and shapes."""

    fallback: str | None = None  # the mean always applies

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] | None = None
        self._errors: dict[str, np.ndarray] = {}
        self._weights: list[float] = []
        self.count = 0

    @property
    def total_weight(self) -> float:
        """The sum of the weights so far (exact, whatever their order)."""
        return math.fsum(self._weights)

    def add(self, state: LoraState, weight: float) -> None:
        """Fold in ``state`` with a finite, non-negative ``weight``."""
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be finite and non-negative, got {weight}")
        if self._sums is None:
            self._sums = {key: np.zeros(value.shape, dtype=np.float64) for key, value in state.items()}
            self._errors = {key: np.zeros(value.shape, dtype=np.float64) for key, value in state.items()}
        elif state.keys() != self._sums.keys():
            raise ValueError("adapters to average have different keys")
        for key, value in state.items():
            if value.shape != self._sums[key].shape:
                raise ValueError(f"adapter tensor {key} has shape {value.shape}, expected {self._sums[key].shape}")
            # The product in float64 too: weight * float32 would round in float32 before the sum sees it.
            term = weight * np.asarray(value, dtype=np.float64)
            total = self._sums[key] + term
            # TwoSum: the exact error of that addition, whatever the magnitudes.
            back = total - term
            self._errors[key] += (self._sums[key] - back) + (term - (total - back))
            self._sums[key] = total
        self._weights.append(float(weight))
        self.count += 1

    def result(self) -> LoraState:
        """The mean so far (float32)."""
        if self._sums is None:
            raise ValueError("cannot average zero adapters")
        total = self.total_weight
        if total <= 0:
            raise ValueError("weights sum to zero")
        return {key: ((value + self._errors[key]) / total).astype(np.float32) for key, value in self._sums.items()}


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
