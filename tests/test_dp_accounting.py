"""The accountant behind every reported ε: min(RDP, PLD), checked against independent numbers."""

from __future__ import annotations

import math
import random

import dp_accounting
import pytest
from opacus.accountants.rdp import RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from privacy import dp
from privacy.dp import calibrate_run_noise, epsilon, plan_run

DELTA = 1e-5


def _rounds(rounds: int = 5, sigma: float = 1.0, q: float = 0.05, steps: int = 20) -> list:
    """A typical run as the ledger records it: one event per round, then the evaluations."""
    return [(sigma, q, steps)] * rounds + [(10.0, 1.0, 1)] * rounds


HISTORIES = [
    _rounds(),
    _rounds(50),  # a long-lived node: 50 rounds of training and evaluation
    [(1.0, 0.02, 150)],
    [(1.0, 0.02, 150), (10.0, 1.0, 3), (0.8, 0.01, 300)],
    [(2.5, 0.05, 40), (0.7, 0.004, 1000)],
    [(5.0, 1.0, 1)],
    [(1.0, 0.02, 1)],
]


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of the Gaussian mechanism (sensitivity 1), Balle & Wang 2018, Theorem 8."""

    def delta_at(eps: float) -> float:
        a, b = 1 / (2 * sigma), eps * sigma
        return float(norm.cdf(a - b) - math.exp(eps) * norm.cdf(-a - b))

    return float(brentq(lambda e: delta_at(e) - delta, 0.0, 100.0, xtol=1e-12))


@pytest.mark.parametrize("history", HISTORIES)
def test_pld_never_exceeds_rdp_and_the_report_is_the_minimum(history: list) -> None:
    rdp, pld = epsilon(history, DELTA, "rdp"), epsilon(history, DELTA, "pld")
    assert pld <= rdp
    assert epsilon(history, DELTA) == min(rdp, pld)
    assert epsilon(history, DELTA, "min") == epsilon(history, DELTA)


def test_pld_is_clearly_tighter_on_a_typical_multi_round_run() -> None:
    rdp, pld = epsilon(_rounds(), DELTA, "rdp"), epsilon(_rounds(), DELTA, "pld")
    assert pld < 0.9 * rdp  # ≈3.62 vs 4.15
    assert epsilon(_rounds(), DELTA) == pld


@pytest.mark.parametrize("sigma", [1.0, 2.0, 5.0, 10.0, 20.0])
def test_single_gaussian_is_within_a_few_percent_above_the_exact_epsilon(sigma: float) -> None:
    exact = _gaussian_epsilon(sigma, DELTA)
    ours = epsilon([(sigma, 1.0, 1)], DELTA)
    assert exact <= ours <= exact * 1.02
    assert epsilon([(sigma, 1.0, 1)], DELTA, "rdp") > ours  # RDP alone is looser here


def test_composed_evaluations_are_one_gaussian_exactly() -> None:
    """k Gaussians compose to one with σ = (Σ 1/σ²)^-1/2: check against the exact ε of that."""
    history = [(10.0, 1.0, 1)] * 5 + [(20.0, 1.0, 2)]
    exact = _gaussian_epsilon(1 / math.sqrt(5 / 100 + 2 / 400), DELTA)
    assert exact <= epsilon(history, DELTA) <= exact * 1.02


@pytest.mark.parametrize("history", HISTORIES[2:5])
def test_matches_dp_accounting_composed_event_by_event(history: list) -> None:
    """Our RDP is Opacus's; our PLD (merged events, adaptive grid) matches a fine-grid reference."""
    rdp = dp_accounting.rdp.RdpAccountant(RDPAccountant.DEFAULT_ALPHAS)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for sigma, q, steps in history:
        gauss = dp_accounting.GaussianDpEvent(sigma)
        event = gauss if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gauss)
        rdp.compose(dp_accounting.SelfComposedDpEvent(event, steps))
        pld.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    assert epsilon(history, DELTA, "rdp") == pytest.approx(rdp.get_epsilon(DELTA), rel=1e-3)
    assert epsilon(history, DELTA, "pld") == pytest.approx(pld.get_epsilon(DELTA), rel=2e-3)


def test_two_runs_compose_to_the_concatenated_history_less_than_the_sum() -> None:
    run_a, run_b = _rounds(3), _rounds(4, sigma=0.8, q=0.02, steps=50)
    both = epsilon(run_a + run_b, DELTA)
    assert both < epsilon(run_a, DELTA) + epsilon(run_b, DELTA)
    assert both > max(epsilon(run_a, DELTA), epsilon(run_b, DELTA))


def test_order_and_splitting_of_events_do_not_change_epsilon() -> None:
    """The ledger compares merged reservations with per-round events: they must agree exactly."""
    history = _rounds(4)
    shuffled = history[:]
    random.Random(0).shuffle(shuffled)
    merged = [(1.0, 0.05, 80), (10.0, 1.0, 4)]
    assert epsilon(shuffled, DELTA) == epsilon(history, DELTA) == epsilon(merged, DELTA)
    assert epsilon(history + [(3.0, 0.1, 0)], DELTA) == epsilon(history, DELTA)  # no-op event


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown accountant"):
        epsilon(_rounds(), DELTA, "prv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise must be > 0"):
        epsilon([(0.0, 0.05, 10)], DELTA)
    assert epsilon([], DELTA) == 0.0


def test_calibration_lands_in_the_window_with_few_accountant_calls() -> None:
    dp._pld_epsilon.cache_clear()
    target = 3.0
    sigma = calibrate_run_noise(
        target, DELTA, sample_rate=0.05, rounds=5, epochs=1, eval_noise=10.0
    )
    calls = dp._pld_epsilon.cache_info().misses
    plan = plan_run(noise_multiplier=sigma, sample_rate=0.05, rounds=5, epochs=1, eval_noise=10)
    assert 0.99 * target <= epsilon([p[:3] for p in plan], DELTA) <= target
    assert calls <= 10  # each call is ~0.1–0.3 s; bisection would take ~12+
