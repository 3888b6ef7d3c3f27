"""DP-SGD privacy arithmetic: calibrating noise and bounding ε over a history of releases.

A *history* is a list of sampled-Gaussian mechanism events `(noise_multiplier, sample_rate, steps)`
— exactly what Opacus's accountants record. Composing the whole history with an accountant gives
a valid (and tighter) bound than adding per-run ε values; the node-side ledger builds on this.

Two accountants bound the same composition: Rényi DP (Opacus) and privacy loss distributions
(Google's dp-accounting, pessimistic discretisation). Both are valid upper bounds on ε at δ, so
their minimum is too; that minimum is what `epsilon()` reports (PLD was the tighter one in every
regime we measured: e.g. 3.62 vs 4.15 for 5 rounds × 20 steps at q=0.05, σ=1 plus 5 evaluations).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import dp_accounting
from opacus.accountants import create_accountant

Event = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)
Accountant = Literal["min", "rdp", "pld"]
ACCOUNTANT = "min(rdp, pld)"  # what `epsilon()` reports by default, named for status output

# PLD discretisation: the interval is ε_RDP / _PLD_BUCKETS, kept within [_PLD_MIN_VDI,
# _PLD_MAX_VDI]. Pessimistic rounding keeps the bound valid at any interval; this choice keeps
# its slack ≲0.1% of ε (measured against a ≥20× finer grid) at ~20–250 ms per history.
_PLD_BUCKETS = 2500
_PLD_MIN_VDI, _PLD_MAX_VDI = 1e-5, 1e-3


class PlannedEvent(NamedTuple):
    """A release a run intends to make; `purpose` is training or evaluation."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    purpose: str = "training"


def normalize_history(history: Iterable[Sequence[float]]) -> list[Event]:
    """Validate events so a corrupt history can never silently lower ε."""
    events: list[Event] = []
    for i, ev in enumerate(history):
        if len(ev) != 3:
            raise ValueError(f"privacy history event {i}: expected (noise, sample_rate, steps)")
        sigma, q, steps = float(ev[0]), float(ev[1]), int(ev[2])
        if not (sigma > 0 and 0 < q <= 1 and steps >= 0):
            raise ValueError(
                f"privacy history event {i}: noise must be > 0, 0 < q <= 1, steps >= 0"
            )
        events.append((sigma, q, steps))
    return events


def canonical_history(history: Iterable[Sequence[float]]) -> tuple[Event, ...]:
    """Merge events with equal (σ, q) and sort them.

    Composition does not depend on order, and n steps of one mechanism are that mechanism
    self-composed n times, so this changes no bound. It makes ε a function of the multiset of
    releases (a reservation's merged plan and its per-round events give the same number), keeps
    the accountants' work proportional to distinct mechanisms rather than rounds, and is the key
    of the result cache.
    """
    steps: dict[tuple[float, float], int] = defaultdict(int)
    for sigma, q, n in normalize_history(history):
        if n > 0:
            steps[(sigma, q)] += n
    return tuple((sigma, q, n) for (sigma, q), n in sorted(steps.items()))


def epsilon(
    history: Iterable[Sequence[float]], delta: float, accountant: Accountant = "min"
) -> float:
    """ε at `delta` of the composition of every event in `history` (0 for an empty history).

    `accountant="min"` (the default, reported as "min(rdp, pld)") is the smaller of the RDP and
    PLD bounds; "rdp" and "pld" give either one alone. Results are cached per canonical history.
    """
    if accountant not in ("min", "rdp", "pld"):
        raise ValueError(f"unknown accountant {accountant!r}: use 'min', 'rdp' or 'pld'")
    events = canonical_history(history)
    if not events:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(events, float(delta))
    if accountant == "pld":
        return _pld_epsilon(events, float(delta))
    return min(_rdp_epsilon(events, float(delta)), _pld_epsilon(events, float(delta)))


@functools.lru_cache(maxsize=4096)
def _rdp_epsilon(events: tuple[Event, ...], delta: float) -> float:
    """Opacus's RDP accountant (its default orders), converted to (ε, δ)."""
    acc = create_accountant("rdp")
    acc.history = list(events)
    return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=4096)
def _pld_epsilon(events: tuple[Event, ...], delta: float) -> float:
    """dp-accounting's PLD accountant (add-or-remove-one neighbours, as Opacus's RDP).

    Events at q = 1 are plain Gaussians; their composition is exactly one Gaussian with
    σ = (Σ steps/σ²)^(-1/2), so they enter as a single event (exact, and one discretisation).
    """
    vdi = min(max(_rdp_epsilon(events, delta) / _PLD_BUCKETS, _PLD_MIN_VDI), _PLD_MAX_VDI)
    parts: list[dp_accounting.DpEvent] = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n
        )
        for sigma, q, n in events
        if q < 1
    ]
    precision = sum(n / sigma**2 for sigma, q, n in events if q == 1)
    if precision > 0:
        parts.append(dp_accounting.GaussianDpEvent(1 / math.sqrt(precision)))
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=vdi)
    acc.compose(dp_accounting.ComposedDpEvent(parts))
    return float(acc.get_epsilon(delta))


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson-sampled steps per epoch, k = round(1/q): independent of the data size."""
    if not 0 < sample_rate <= 1:
        raise ValueError("sample rate must be in (0, 1]")
    return max(1, round(1 / sample_rate))


def effective_sample_rate(sample_rate: float) -> float:
    """The rate actually used and accounted: exactly 1/k, so plans and spends match."""
    return 1.0 / steps_per_epoch(sample_rate)


# `max-grad-norm` 0 ("auto"): the clipping norm C a node uses follows its own training noise σ.
# C trades two errors: clipping bias (logistic per-record gradients are |p − y|·‖x‖; at C = 1
# nearly every record is clipped, which pushes the logits out — raw log loss 0.53–0.60 on Telco
# and flchain, calibration slope ≈ 0.5 — and cost 0.005–0.006 AUC at ε ≥ 2) against noise σ·C.
# C = σ_C / σ within [1, 3]: σ 7.6 (ε 1, 10 rounds) keeps C 1; σ 1.75 (ε 3) gets C 3. Measured on
# Telco, bank and five public data sets the defaults were never tuned on (bench/results/
# quality_unseen.md). C does not change ε (the noise is σ·C), so the rule needs no accounting.
AUTO_CLIP_NOISE = 6.0
AUTO_CLIP_MIN, AUTO_CLIP_MAX = 1.0, 3.0


def auto_clip_norm(sigma: float) -> float:
    """The clipping norm of a node training with noise multiplier `sigma` under "auto"."""
    if not (math.isfinite(sigma) and sigma > 0):
        return AUTO_CLIP_MIN
    return min(AUTO_CLIP_MAX, max(AUTO_CLIP_MIN, AUTO_CLIP_NOISE / sigma))


def clip_norm(max_grad_norm: float, sigma: float) -> float:
    """The clipping norm a node uses: the run's `max-grad-norm`, or the auto rule for 0."""
    return max_grad_norm if max_grad_norm > 0 else auto_clip_norm(sigma)


def describe_clip(max_grad_norm: float) -> str:
    """`max-grad-norm` in words: its value, or the auto rule."""
    if max_grad_norm > 0:
        return f"{max_grad_norm:g}"
    return f"auto ({AUTO_CLIP_NOISE:g}/σ within [{AUTO_CLIP_MIN:g}, {AUTO_CLIP_MAX:g}])"


# The drift reference a node releases on finish (server.drift): a sub-purpose of analytics, so an
# owner's analytics cap binds it and only owners who allow analytics release it
DRIFT_PURPOSE = "analytics/drift"


def plan_run(
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    epochs: int,
    eval_noise: float,
    final_eval_noise: float = 0.0,
    reference_noise: float = 0.0,
) -> list[PlannedEvent]:
    """Every release a run will make on a node, known before its data is read.

    Each round: DP-SGD steps at rate q (epochs × k steps), then one Gaussian-noised evaluation
    histogram (sensitivity 1, sampling rate 1) if `eval_noise` > 0. With `final_eval_noise` > 0
    the last of those evaluations (the final model's) is at that σ instead, and the others at
    `eval_noise` (none if it is 0). With `reference_noise` > 0, one more Gaussian release on
    finish: the drift reference (all features' histograms, purpose "analytics/drift").
    """
    q = effective_sample_rate(sample_rate)
    k = steps_per_epoch(sample_rate)
    plan = [PlannedEvent(noise_multiplier, q, epochs * k, "training") for _ in range(rounds)]
    evals = [eval_noise] * rounds if eval_noise > 0 else []
    if final_eval_noise > 0:
        evals = evals[1:] + [final_eval_noise] if evals else [final_eval_noise]
    plan += [PlannedEvent(sigma, 1.0, 1, "evaluation") for sigma in evals]
    if reference_noise > 0:
        plan.append(PlannedEvent(reference_noise, 1.0, 1, DRIFT_PURPOSE))
    return plan


def calibrate_run_noise(
    target_epsilon: float,
    delta: float,
    *,
    sample_rate: float,
    rounds: int,
    epochs: int,
    eval_noise: float,
    final_eval_noise: float = 0.0,
    reference_noise: float = 0.0,
    tolerance: float = 0.01,
) -> float:
    """Smallest training noise so the whole planned run (evaluations included) spends ≤ target.

    "Spends" is `epsilon()` of the plan — the number the ledger will reserve and charge — and the
    answer lands in [target × (1 − tolerance), target] unless the 0.3 noise floor already fits.
    Each `epsilon()` costs ~0.1–0.3 s (RDP and PLD), so the bracket is narrowed by regula falsi
    (Illinois variant) on log ε against log σ, where ε(σ) is close to a straight line: typically
    3–6 evaluations instead of bisection's ~12.
    """

    def total(sigma: float) -> float:
        plan = plan_run(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            rounds=rounds,
            epochs=epochs,
            eval_noise=eval_noise,
            final_eval_noise=final_eval_noise,
            reference_noise=reference_noise,
        )
        return epsilon([p[:3] for p in plan], delta)

    lo, hi = 0.3, 1.0
    while total(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(
                f"target ε={target_epsilon} is unreachable: evaluation noise alone spends "
                "too much; raise eval noise or the target"
            )
    if total(lo) <= target_epsilon:  # only possible at the 0.3 floor
        return lo

    def gap(sigma: float) -> float:  # > 0: too little noise
        return math.log(total(sigma) / target_epsilon)

    g_lo, g_hi = gap(lo), gap(hi)  # g_lo > 0 >= g_hi
    side = 0
    for i in range(100):
        if total(hi) >= target_epsilon * (1 - tolerance) or hi - lo < 1e-4:
            break
        x_lo, x_hi = math.log(lo), math.log(hi)
        x = x_lo + g_lo * (x_hi - x_lo) / (g_lo - g_hi)
        if i % 8 == 7 or not x_lo < x < x_hi:  # safeguard: a plain bisection step
            x = (x_lo + x_hi) / 2
        mid = math.exp(x)
        g = gap(mid)
        if g > 0:
            lo, g_lo = mid, g
            if side == 1:
                g_hi /= 2  # Illinois: the kept end stalls, pull the line towards it
            side = 1
        else:
            hi, g_hi = mid, g
            if side == -1:
                g_lo /= 2
            side = -1
    return hi
