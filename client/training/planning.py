"""A run's noise and its planned releases, computed from the settings alone (before any data).

`noise_multiplier` calibrates the training σ to a target ε over the whole planned run, `plan`
lists every DP release the run will make on a node (what the ledger reserves), and
`fit_evaluations` scales the evaluation σs so that a small target ε stays reachable.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

from client.training.config import DPTrainConfig
from privacy.dp import PlannedEvent, calibrate_run_noise, epsilon, plan_run

# With a target ε, the run's evaluations (per-round and final) may spend at most this share of
# it on their own; training gets the rest. The run-config defaults put them at ≈ 0.85 of ε = 1.
EVAL_SHARE = 0.85


def fit_evaluations(cfg: DPTrainConfig) -> DPTrainConfig:
    """`cfg` with its evaluation σs scaled up by one common factor until the evaluations alone
    spend at most EVAL_SHARE of the target ε (unchanged if they already do, or without a target).

    A fixed evaluation σ that suits ε = 1 would make a smaller target unreachable; scaling keeps
    the defaults usable at any target. It depends on the settings alone (public), only ever adds
    noise, and the node reports the σ of each release, so the coordinator reads it correctly.
    """
    released = (cfg.eval_noise, cfg.final_eval_noise, cfg.drift_reference_noise)
    if cfg.target_epsilon <= 0 or all(s <= 0 for s in released):
        return cfg
    factor = _evaluation_factor(*released, cfg.total_rounds, cfg.target_epsilon, cfg.delta)
    if factor <= 1.0:
        return cfg
    return replace(
        cfg,
        eval_noise=cfg.eval_noise * factor,
        final_eval_noise=cfg.final_eval_noise * factor,
        drift_reference_noise=cfg.drift_reference_noise * factor,
    )


@functools.lru_cache(maxsize=256)
def _evaluation_factor(
    eval_noise: float,
    final_eval_noise: float,
    reference_noise: float,
    rounds: int,
    target: float,
    delta: float,
) -> float:
    """Smallest factor f ≥ 1 (to 0.1 %) with ε(evaluations and drift reference at f·σ) ≤
    EVAL_SHARE × target."""
    sigmas = [
        p.noise_multiplier
        for p in plan_run(
            noise_multiplier=1.0,
            sample_rate=1.0,
            rounds=rounds,
            epochs=1,
            eval_noise=eval_noise,
            final_eval_noise=final_eval_noise,
            reference_noise=reference_noise,
        )
        if p.purpose != "training"
    ]
    # Gaussian releases compose into one Gaussian: σ_eff = (Σ σ⁻²)^(-1/2), scaled by f
    sigma = sum(s**-2 for s in sigmas) ** -0.5
    budget = EVAL_SHARE * target

    def spends(f: float) -> float:
        return epsilon([(sigma * f, 1.0, 1)], delta)

    if spends(1.0) <= budget:
        return 1.0
    lo, hi = 1.0, 2.0
    while spends(hi) > budget:
        lo, hi = hi, hi * 2
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if spends(mid) > budget else (lo, mid)
    return hi


def noise_multiplier(cfg: DPTrainConfig) -> float:
    """The training noise: fixed, or calibrated so the whole planned run hits target ε."""
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    return calibrate_run_noise(
        cfg.target_epsilon,
        cfg.delta,
        sample_rate=cfg.sample_rate,
        rounds=cfg.total_rounds,
        epochs=cfg.epochs,
        eval_noise=cfg.eval_noise,
        final_eval_noise=cfg.final_eval_noise,
        reference_noise=cfg.drift_reference_noise,
    )


def plan(cfg: DPTrainConfig) -> list[PlannedEvent]:
    """Every DP release this run will make on a node — computable before any data is read."""
    return plan_run(
        noise_multiplier=noise_multiplier(cfg),
        sample_rate=cfg.sample_rate,
        rounds=cfg.total_rounds,
        epochs=cfg.epochs,
        eval_noise=cfg.eval_noise,
        final_eval_noise=cfg.final_eval_noise,
        reference_noise=cfg.drift_reference_noise,
    )
