"""DP-SGD privacy arithmetic: calibrating noise and bounding ε over a history of releases.

A *history* is a list of sampled-Gaussian mechanism events `(noise_multiplier, sample_rate, steps)`
— exactly what Opacus's accountants record. Composing the whole history with one accountant gives
a valid (and tighter) bound than adding per-run ε values; the node-side ledger builds on this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from opacus.accountants import create_accountant

Event = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


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


def epsilon(history: Iterable[Sequence[float]], delta: float, accountant: str = "rdp") -> float:
    """ε at `delta` of the composition of every event in `history` (0 for an empty history)."""
    events = [e for e in normalize_history(history) if e[2] > 0]
    if not events:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = list(events)
    return float(acc.get_epsilon(delta=delta))


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson-sampled steps per epoch, k = round(1/q): independent of the data size."""
    if not 0 < sample_rate <= 1:
        raise ValueError("sample rate must be in (0, 1]")
    return max(1, round(1 / sample_rate))


def effective_sample_rate(sample_rate: float) -> float:
    """The rate actually used and accounted: exactly 1/k, so plans and spends match."""
    return 1.0 / steps_per_epoch(sample_rate)


def plan_run(
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    epochs: int,
    eval_noise: float,
) -> list[PlannedEvent]:
    """Every release a run will make on a node, known before its data is read.

    Each round: DP-SGD steps at rate q (epochs × k steps), then one Gaussian-noised evaluation
    histogram (sensitivity 1, sampling rate 1) if `eval_noise` > 0.
    """
    q = effective_sample_rate(sample_rate)
    k = steps_per_epoch(sample_rate)
    plan = [PlannedEvent(noise_multiplier, q, epochs * k, "training") for _ in range(rounds)]
    if eval_noise > 0:
        plan += [PlannedEvent(eval_noise, 1.0, 1, "evaluation") for _ in range(rounds)]
    return plan


def calibrate_run_noise(
    target_epsilon: float,
    delta: float,
    *,
    sample_rate: float,
    rounds: int,
    epochs: int,
    eval_noise: float,
    tolerance: float = 0.01,
) -> float:
    """Smallest training noise so the whole planned run (evaluations included) spends ≤ target."""

    def total(sigma: float) -> float:
        plan = plan_run(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            rounds=rounds,
            epochs=epochs,
            eval_noise=eval_noise,
        )
        return epsilon([p[:3] for p in plan], delta)

    lo, hi = 0.3, 1.0
    while total(hi) > target_epsilon:
        hi *= 2
        if hi > 1e4:
            raise ValueError(
                f"target ε={target_epsilon} is unreachable: evaluation noise alone spends "
                "too much; raise eval noise or the target"
            )
    if total(lo) <= target_epsilon:
        return lo
    while total(hi) < target_epsilon * (1 - tolerance) and hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if total(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
