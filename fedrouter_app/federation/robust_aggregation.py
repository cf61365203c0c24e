"""Aggregation rules that bound what a few malicious replies can do to an aggregate (``aggregation.rule``).

Every strategy folds the adapters it aggregates (one global adapter, one per
cluster, one per task key) through :func:`new_aggregate`, so a rule applies to
each aggregated adapter separately: per global cluster for FedRouter, per slot
for FL-TAC, per cluster for IFCA and CFL, per key for TAP.

- ``mean``: the weighted mean (:class:`~fedrouter_app.federation.aggregation.WeightedMean`),
  folded in reply by reply: the server holds one accumulator, not the replies.
- ``norm_clip``: each update (reply minus the adapter the server sent) is
  scaled down to L2 norm ``clip_norm`` at most, then the weighted mean; also
  folded in as replies come.
- ``median``: coordinate-wise median (Flower's ``aggregate_median``);
- ``trimmed_mean``: coordinate-wise mean without the ``trim_fraction`` largest
  and smallest values (Flower's ``aggregate_trimmed_avg``);
- ``krum`` / ``multi_krum``: the reply (Krum) or the mean of the ``keep``
  replies (Multi-Krum, weighted) whose summed squared distances to their
  ``n - f - 2`` nearest others are smallest, ``f = num_malicious`` (Flower's
  ``aggregate_krum``). Krum's guarantee needs ``n >= 2f + 3`` replies; with
  fewer (a small cluster, a round where clients dropped out) no reply can be
  told apart as honest, and Flower's function would pick by reply order, so
  the aggregate is the coordinate-wise median instead: order-independent, and
  robust to a minority. Each such fallback is recorded in the round's
  ``strategy.aggregation_fallbacks`` and logged.

The last four need every reply at once, so they keep them until the round's
result is asked for; they ignore the weights (Multi-Krum weights the replies
it keeps). Flower's functions take lists of arrays: an adapter's tensors go in
key order and come back as a state.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedrouter_app.compat.flwr_helpers import aggregate_krum, aggregate_median, aggregate_trimmed_avg
from fedrouter_app.federation.aggregation import WeightedMean
from fedrouter_app.model.lora import LoraState
from fedrouter_app.schema.federation import AggregationSettings

STREAMING_RULES = ("mean", "norm_clip")
RULES = (*STREAMING_RULES, "median", "trimmed_mean", "krum", "multi_krum")


class Aggregate(Protocol):
    """What strategies fold replies into: ``add`` each (adapter, weight), then ``result``."""

    count: int
    # Why the configured rule could not apply, once ``result`` has run; None: it applied.
    fallback: str | None

    def add(self, state: LoraState, weight: float) -> None: ...

    def result(self) -> LoraState: ...


def new_aggregate(settings: AggregationSettings, reference: LoraState | None = None) -> Aggregate:
    """An empty aggregate under ``settings.rule``.

    Parameters
    ----------
    settings : AggregationSettings
        The rule and its parameters.
    reference : LoraState, optional
        The adapter the replies started from (what the server sent): updates
        are taken against it. ``norm_clip`` needs it.
    """
    if settings.rule == "mean":
        return WeightedMean()
    if settings.rule == "norm_clip":
        if reference is None:
            raise ValueError("aggregation.rule=norm_clip needs the adapter the replies started from")
        return NormClippedMean(reference, settings.clip_norm)
    return HeldAggregate(settings)


class NormClippedMean:
    """Weighted mean of ``reference + clip(update)``, each update scaled to L2 norm ``clip_norm`` at most."""

    fallback: str | None = None  # clipping always applies

    def __init__(self, reference: LoraState, clip_norm: float) -> None:
        self.reference = reference
        self.clip_norm = clip_norm
        self.mean = WeightedMean()
        self.clipped = 0

    @property
    def count(self) -> int:
        return self.mean.count

    def add(self, state: LoraState, weight: float) -> None:
        update = {key: np.asarray(value, np.float64) - self.reference[key] for key, value in state.items()}
        norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in update.values())))
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        self.clipped += scale < 1.0
        self.mean.add({key: self.reference[key] + scale * u for key, u in update.items()}, weight)

    def result(self) -> LoraState:
        return self.mean.result()


def krum_minimum(num_malicious: int) -> int:
    """Replies Krum needs to tell ``num_malicious`` bad ones apart: ``2f + 3``."""
    return 2 * num_malicious + 3


class HeldAggregate:
    """A rule that needs every reply at once (median, trimmed mean, Krum, Multi-Krum), through Flower's functions."""

    def __init__(self, settings: AggregationSettings) -> None:
        self.settings = settings
        self.states: list[LoraState] = []
        self.weights: list[float] = []
        # Why the rule could not apply as configured, once result() has run (None: it applied).
        self.fallback: str | None = None

    @property
    def count(self) -> int:
        return len(self.states)

    def add(self, state: LoraState, weight: float) -> None:
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be finite and non-negative, got {weight}")
        if self.states and state.keys() != self.states[0].keys():
            raise ValueError("adapters to aggregate have different keys")
        self.states.append(state)
        self.weights.append(float(weight))

    def result(self) -> LoraState:
        if not self.states:
            raise ValueError("cannot aggregate zero adapters")
        keys = sorted(self.states[0])
        results = [
            ([np.asarray(s[key], np.float64) for key in keys], w)
            for s, w in zip(self.states, self.weights, strict=True)
        ]
        rule, n = self.settings.rule, len(results)
        if rule == "median":
            arrays = aggregate_median(results)
        elif rule == "trimmed_mean":
            arrays = aggregate_trimmed_avg(results, self.settings.trim_fraction)
        elif n < krum_minimum(f := self.settings.num_malicious):
            self.fallback = f"{rule} with num_malicious={f} needs {krum_minimum(f)} replies, got {n}: median"
            arrays = aggregate_median(results)
        else:
            keep = 0 if rule == "krum" else max(1, min(n, self.settings.keep or n - f))
            arrays = aggregate_krum(results, f, keep)
        return {key: np.asarray(a, dtype=np.float32) for key, a in zip(keys, arrays, strict=True)}
