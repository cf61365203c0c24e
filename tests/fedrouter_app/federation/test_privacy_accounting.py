"""Epsilon per round: the accountant against closed forms, and in a run's records."""

from __future__ import annotations

import math

import pytest

from fedrouter_app.federation.exchange import RoundRecord
from fedrouter_app.federation.privacy_accounting import (
    RDP_ORDERS,
    PrivacyLedger,
    dp_fedavg_epsilon,
    gaussian_epsilon,
    privacy_summary,
)
from fedrouter_app.runners.inprocess import run_inprocess
from tests.conftest import tiny_overrides


def closed_form_gaussian(z: float, rounds: int, delta: float) -> float:
    """T Gaussian mechanisms: RDP T*a/(2 z^2) at order a, turned into (eps, delta) by the improved conversion."""
    return min(rounds * a / (2 * z * z) + math.log1p(-1 / a) - math.log(delta * a) / (a - 1) for a in RDP_ORDERS)


@pytest.mark.parametrize(("z", "rounds", "delta"), [(1.0, 1, 1e-5), (1.0, 10, 1e-5), (4.0, 100, 1e-6), (0.7, 3, 1e-3)])
def test_full_participation_matches_the_gaussian_closed_form(z, rounds, delta):
    assert dp_fedavg_epsilon(z, 1.0, rounds, delta) == pytest.approx(closed_form_gaussian(z, rounds, delta), rel=1e-9)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    base = dp_fedavg_epsilon(1.0, 0.5, 10, 1e-5)
    assert dp_fedavg_epsilon(1.0, 0.5, 20, 1e-5) > base
    assert dp_fedavg_epsilon(2.0, 0.5, 10, 1e-5) < base
    assert dp_fedavg_epsilon(1.0, 0.1, 10, 1e-5) < base < dp_fedavg_epsilon(1.0, 1.0, 10, 1e-5)


def closed_form_poisson_gaussian(z: float, q: float, rounds: int, delta: float) -> float:
    """Integer orders: A_a = sum_k C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 z^2)), RDP log(A_a) / (a - 1)."""

    def log_a(a: int) -> float:
        terms = [
            math.lgamma(a + 1)
            - math.lgamma(k + 1)
            - math.lgamma(a - k + 1)
            + (a - k) * math.log1p(-q)
            + k * math.log(q)
            + (k * k - k) / (2 * z * z)
            for k in range(a + 1)
        ]
        top = max(terms)
        return top + math.log(sum(math.exp(t - top) for t in terms))

    return min(rounds * log_a(a) / (a - 1) + math.log1p(-1 / a) - math.log(delta * a) / (a - 1) for a in RDP_ORDERS)


@pytest.mark.parametrize(("z", "q", "rounds"), [(1.0, 0.5, 10), (3.0, 0.01, 1), (1.2, 0.1, 50)])
def test_sampled_rounds_match_the_subsampled_gaussian_closed_form(z, q, rounds):
    expected = closed_form_poisson_gaussian(z, q, rounds, 1e-5)
    assert dp_fedavg_epsilon(z, q, rounds, 1e-5) == pytest.approx(expected, rel=1e-6)


def test_no_noise_and_no_rounds():
    assert dp_fedavg_epsilon(0.0, 1.0, 3, 1e-5) == math.inf
    assert dp_fedavg_epsilon(1.0, 1.0, 0, 1e-5) == 0.0
    assert gaussian_epsilon(1.0, 1e-5) == pytest.approx(closed_form_gaussian(1.0, 1, 1e-5), rel=1e-9)


def test_ledger_reports_both_mechanisms(make_cfg):
    cfg = make_cfg("method=fedrouter", "method.centroid_noise=2.0", "dp.delta=1e-6")
    ledger = PrivacyLedger()
    ledger.on_run_start(cfg, None, {})
    record = RoundRecord(server_round=3, lr=0.0)
    ledger.on_round_end(record)
    assert "dp" not in record.privacy  # dp.mode is off
    centroids = record.privacy["centroids"]
    assert centroids["epsilon"] == pytest.approx(closed_form_gaussian(2.0, 1, 1e-6), rel=1e-9)
    assert centroids["delta"] == 1e-6
    assert "eps" in privacy_summary(record.privacy) and "delta 1e-06" in privacy_summary(record.privacy)


@pytest.mark.slow
def test_dp_run_reports_epsilon_every_round():
    results, _, _ = run_inprocess(
        list(tiny_overrides("method=fedit", "dp.mode=server", "dp.noise_multiplier=1.5", "fraction_train=0.5")), 4
    )
    assert results["run"]["status"] == "completed"
    trained = [r for r in results["rounds"] if r["round"] >= 1]
    epsilons = [r["privacy"]["dp"]["epsilon"] for r in trained]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    for r in trained:
        entry = r["privacy"]["dp"]
        assert entry["sampling_rate"] == 0.5 and entry["rounds"] == r["round"] and entry["delta"] == 1e-5
        assert entry["epsilon"] == pytest.approx(dp_fedavg_epsilon(1.5, 0.5, r["round"], 1e-5))
        # The epsilon comes with what it assumes, each true of what ran.
        assumptions = entry["assumptions"]
        assert "uniform" in assumptions["weighting"] and "rate 0.5" in assumptions["sampling"]
        assert "by the server" in assumptions["clipping"] and "client-level" in assumptions["unit"]
    assert "privacy" not in results["rounds"][0] or results["rounds"][0]["privacy"]["dp"]["epsilon"] == 0.0
