"""The (epsilon, delta) a run has spent so far, from a maintained accountant (Google's ``dp-accounting``, RDP).

Two mechanisms release private information in this project:

- **DP-FedAvg** (``dp.mode=server|client``, Flower's fixed-clipping wrappers):
  each training round sums the clipped updates of a sample of ``k`` of the
  ``n`` clients and adds Gaussian noise of ``z`` times the clipping norm. One
  client joining or leaving moves the sum by at most the clipping norm, so a
  round is a Gaussian mechanism with noise multiplier ``z``, on a sample of
  the clients: *client-level* privacy. The sample is accounted as Poisson
  sampling with rate ``q = k / n``, the usual stand-in for a fixed-size sample
  (DP-FedAvg's own analysis and TF Privacy do the same); with every client in
  every round (``q = 1``) the accounting is exact. Rounds compose.
- **FedRouter's noisy centroids** (``method.centroid_noise``): each client
  releases its clipped cluster sums once, with Gaussian noise of ``z`` times
  the clip. A sample lies in one cluster, so the release is one Gaussian
  mechanism over the client's samples: *sample-level* privacy of that client's
  data, given the cluster sizes (sent without noise). The release is kept and
  repeated, never redrawn, so its epsilon does not grow with rounds.

:class:`PrivacyLedger`, a loop callback, puts both into every round's record
(``results.json``) and the progress line.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from fedrouter_app.federation.rounds import sample_size

if TYPE_CHECKING:
    from fedrouter_app.federation.exchange import RoundRecord
    from fedrouter_app.model.lora import LoraTemplate
    from fedrouter_app.schema.settings import RunConfig
    from fedrouter_app.strategies.base import Strategy

# Integer Renyi orders: fractional ones make the subsampled Gaussian's series converge slowly (and warn).
RDP_ORDERS = (*range(2, 257), 320, 384, 512, 768, 1024)


def dp_fedavg_epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` rounds of the subsampled Gaussian mechanism (``inf`` without noise).

    Parameters
    ----------
    noise_multiplier : float
        ``z``: noise std over the clipping norm.
    sampling_rate : float
        Share of the clients sampled per round, in (0, 1].
    rounds : int
        Rounds composed so far (0 spends nothing).
    delta : float
        The delta of the guarantee.
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    accountant = RdpAccountant(orders=list(RDP_ORDERS))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of one Gaussian mechanism with multiplier ``noise_multiplier`` (``inf`` without noise)."""
    return dp_fedavg_epsilon(noise_multiplier, 1.0, 1, delta)


class PrivacyLedger:
    """Loop callback: the privacy spent so far, in each round's record (``record.privacy``).

    Runs before the callbacks that write or log the record. Stateless across
    rounds (a round's value depends on its number only), so a resumed run
    reports what an uninterrupted one would.
    """

    def __init__(self) -> None:
        self.delta = 0.0
        self.dp: dict[str, Any] | None = None
        self.centroids: dict[str, Any] | None = None

    def on_run_start(self, cfg: RunConfig, strategy: Strategy, template: LoraTemplate) -> None:
        self.delta = cfg.dp.delta
        self.dp = None
        if cfg.dp.mode != "off":
            sampled = sample_size(cfg.num_clients, cfg.fraction_train)
            self.dp = {
                "noise_multiplier": cfg.dp.noise_multiplier,
                "sampling_rate": sampled / cfg.num_clients,
                # What the epsilon below assumes, stated with it (and true of what runs).
                "assumptions": {
                    "sampling": f"{sampled} of {cfg.num_clients} clients a round, accounted as Poisson sampling "
                    f"with rate {sampled / cfg.num_clients:g} (exact when every client takes part)",
                    "weighting": "uniform: every sampled client counts once in the mean (reported sizes are not used)",
                    "clipping": f"each client's update clipped to L2 norm {cfg.dp.clipping_norm:g} "
                    f"({'by the server' if cfg.dp.mode == 'server' else 'by each client, checked by the server'})",
                    "unit": "one client's whole participation (client-level privacy)",
                },
            }
        noise = float(cfg.method.shared_centroid_noise())
        self.centroids = None
        if noise > 0:
            self.centroids = {
                "mechanism": "gaussian, once per client (sample-level)",
                "noise_multiplier": noise,
                "delta": self.delta,
                "epsilon": gaussian_epsilon(noise, self.delta),
            }

    def on_round_end(self, record: RoundRecord) -> None:
        if self.dp is not None:
            record.privacy["dp"] = {
                "mechanism": "subsampled gaussian per round (client-level)",
                **self.dp,
                "rounds": record.server_round,
                "delta": self.delta,
                "epsilon": dp_fedavg_epsilon(
                    self.dp["noise_multiplier"], self.dp["sampling_rate"], record.server_round, self.delta
                ),
            }
        if self.centroids is not None:
            record.privacy["centroids"] = dict(self.centroids)

    def on_run_end(self, strategy: Strategy) -> None:
        pass


def privacy_summary(privacy: dict[str, dict[str, Any]]) -> str:
    """The progress line's part, e.g. ``eps 2.31 (dp) | eps 0.84 (centroids), delta 1e-05``."""
    if not privacy:
        return ""
    parts = [f"eps {entry['epsilon']:.3g} ({name})" for name, entry in privacy.items()]
    delta = next(iter(privacy.values()))["delta"]
    return ", ".join(parts) + f", delta {delta:g}"
