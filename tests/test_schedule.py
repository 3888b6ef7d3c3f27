"""client.schedule: each round's learning rate (cosine to the run's final fraction)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from client.schedule import for_round, round_learning_rate
from client.training.config import DPTrainConfig
from common.run_config import RunConfig


def _cfg(rounds: int, final: float) -> DPTrainConfig:
    d = RunConfig.default
    return DPTrainConfig(
        epochs=1,
        sample_rate=0.1,
        learning_rate=0.05,
        learning_rate_final=final,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        target_epsilon=0.0,
        delta=float(d("delta")),
        total_rounds=rounds,
        eval_noise=0.0,
        eval_bins=int(d("eval-bins")),
        proximal_mu=0.0,
        optimizer="adam",
        final_eval_noise=0.0,
        drift_reference_noise=0.0,
        drift_bins=0,
    )


def test_the_rate_falls_from_the_first_round_to_the_final_fraction_by_a_cosine() -> None:
    cfg = _cfg(rounds=10, final=0.3)
    rates = [round_learning_rate(cfg, r) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.015)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))  # strictly decreasing
    # halfway through the run (t = 1/2) the rate is halfway between the ends
    mid = _cfg(rounds=11, final=0.3)
    assert round_learning_rate(mid, 6) == pytest.approx(0.05 * (0.3 + 0.7 / 2))
    # the shape: slow at both ends, fastest in the middle
    steps = [a - b for a, b in zip(rates, rates[1:], strict=False)]
    assert steps[0] < steps[4] and steps[-1] < steps[4]


def test_a_final_fraction_of_one_or_a_one_round_run_keeps_the_rate_constant() -> None:
    assert {round_learning_rate(_cfg(10, 1.0), r) for r in range(1, 11)} == {0.05}
    assert round_learning_rate(_cfg(1, 0.3), 1) == 0.05


def test_rounds_outside_the_run_are_clamped_and_bad_fractions_refused() -> None:
    cfg = _cfg(rounds=5, final=0.3)
    assert round_learning_rate(cfg, 0) == round_learning_rate(cfg, 1)
    assert round_learning_rate(cfg, 99) == round_learning_rate(cfg, 5)
    for bad in (0.0, -0.1, 1.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="learning_rate_final"):
            round_learning_rate(_cfg(5, bad), 2)


def test_for_round_changes_the_learning_rate_and_nothing_else() -> None:
    cfg = _cfg(rounds=10, final=0.3)
    out = for_round(cfg, 10)
    assert out.learning_rate == pytest.approx(0.015)
    assert dataclasses.replace(out, learning_rate=cfg.learning_rate) == cfg


def test_the_run_config_key_reaches_the_nodes_and_is_range_checked() -> None:
    assert RunConfig.default("learning-rate-final") == 1.0  # constant: see the field's comment
    rc = RunConfig.from_run_config({"contract-hash": "c" * 64, "learning-rate-final": 0.3})
    assert rc.node_config("abc")["learning-rate-final"] == 0.3
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="learning-rate-final"):
            RunConfig.from_run_config({"contract-hash": "c" * 64, "learning-rate-final": bad})
