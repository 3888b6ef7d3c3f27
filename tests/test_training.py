"""Local DP-SGD: exact Poisson rate, what is released per round, FedProx, DP evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.training import DPTrainConfig, evaluate, noise_multiplier, plan, train_dp
from common.metrics import binary_metrics
from common.model import build_model
from privacy.dp import epsilon


def _data(n: int = 2000, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.2, n) > 0.9).astype(np.float32)
    return x, y


def test_one_round_runs_exactly_the_planned_steps_at_the_planned_rate() -> None:
    x, y = _data()
    cfg = DPTrainConfig(sample_rate=0.03, epochs=2, total_rounds=3)
    result = train_dp(build_model("logreg", 6), x, y, cfg, noise_multiplier(cfg))
    first = plan(cfg)[0]
    assert result.sample_rate == pytest.approx(first.sample_rate) == pytest.approx(1 / 33)
    assert result.steps == first.steps == 2 * 33
    assert result.noise_multiplier == 1.0 and result.num_examples == 2000
    assert np.isfinite(result.train_loss)


def test_training_learns_despite_noise() -> None:
    x, y = _data(4000)
    model = build_model("logreg", 6)
    cfg = DPTrainConfig(sample_rate=0.02, epochs=3, learning_rate=1.0, total_rounds=1)
    for _ in range(3):
        model.load_state_dict(train_dp(model, x, y, cfg, 1.0).state)
    p = torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).detach().numpy()
    assert binary_metrics(y, p)["roc_auc"] > 0.85


def test_noise_is_not_reproducible_from_the_run_config() -> None:
    """The coordinator knows the seed of the run: the DP noise must not depend on it."""
    x, y = _data(500)
    cfg = DPTrainConfig(sample_rate=0.1, total_rounds=1)
    start = build_model("logreg", 6).state_dict()
    a, b = build_model("logreg", 6), build_model("logreg", 6)
    a.load_state_dict(start)
    b.load_state_dict(start)
    wa = train_dp(a, x, y, cfg, 1.0).state["0.weight"]
    wb = train_dp(b, x, y, cfg, 1.0).state["0.weight"]
    assert not torch.allclose(wa, wb)


def test_fedprox_pulls_towards_the_global_model() -> None:
    x, y = _data(1000)
    start = build_model("logreg", 6).state_dict()
    drift = {}
    for mu in (0.0, 5.0):
        torch.manual_seed(0)
        model = build_model("logreg", 6)
        model.load_state_dict(start)
        cfg = DPTrainConfig(sample_rate=0.05, epochs=3, proximal_mu=mu, total_rounds=1)
        state = train_dp(model, x, y, cfg, 0.5).state
        drift[mu] = float(sum((state[k] - start[k]).norm() for k in start))
    assert drift[5.0] < 0.7 * drift[0.0]


def test_evaluation_releases_only_noised_histograms() -> None:
    x, y = _data(800)
    model = build_model("logreg", 6)
    out = evaluate(model, x, y, noise=10.0, bins=20)
    assert len(out["hist-pos"]) == 20 and len(out["hist-neg"]) == 20
    exact_pos = int(y.sum())
    assert sum(out["hist-pos"]) != exact_pos  # noised (a tie has probability ~0)
    assert abs(sum(out["hist-pos"]) - exact_pos) < 6 * 10 * np.sqrt(20)
    assert set(out) >= {"roc_auc", "log_loss", "n", "positives"}


def test_target_epsilon_covers_training_and_evaluation() -> None:
    cfg = DPTrainConfig(target_epsilon=2.0, sample_rate=0.02, total_rounds=4, eval_noise=10.0)
    spent = epsilon([p[:3] for p in plan(cfg)], cfg.delta)
    assert 1.8 <= spent <= 2.0
    assert {p.purpose for p in plan(cfg)} == {"training", "evaluation"}
