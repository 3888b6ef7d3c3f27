"""Local DP-SGD and DP evaluation: exact releases, totality under hostile weights, FedProx."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from client.training.config import OPTIMIZERS, DPTrainConfig
from client.training.dp_sgd import (
    Moments,
    TrainResult,
    bounded_logits,
    drop_non_finite_samples,
    release_of,
    train_dp,
)
from client.training.evaluation import EvalRelease, evaluate, final_noise
from client.training.planning import EVAL_SHARE, fit_evaluations, noise_multiplier, plan
from common.metrics import binary_metrics
from common.model import build_model
from common.run_config import OPTIMIZER_NAMES, RunConfig
from privacy.dp import AUTO_CLIP_MAX, AUTO_CLIP_MIN, auto_clip_norm, clip_norm, epsilon

_BASE: dict[str, Any] = {
    "epochs": 1,
    "sample_rate": 0.05,
    "learning_rate": 0.5,
    "learning_rate_final": 1.0,
    "max_grad_norm": 1.0,
    "noise_multiplier": 1.0,
    "target_epsilon": 0.0,
    "delta": 1e-5,
    "total_rounds": 1,
    "eval_noise": 10.0,
    "eval_bins": 20,
    "proximal_mu": 0.0,
    "optimizer": "sgd",
    "final_eval_noise": 0.0,
    "drift_reference_noise": 0.0,
    "drift_bins": 0,
}
HOSTILE = (math.inf, -math.inf, math.nan, 1e30, 3e38)  # 3e38: finite, but overflows in forward


def _cfg(**overrides: Any) -> DPTrainConfig:
    return DPTrainConfig(**{**_BASE, **overrides})


def _data(n: int = 2000, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.2, n) > 0.9).astype(np.float32)
    return x, y


def _filled(kind: str, value: float, everywhere: bool) -> nn.Module:
    """A model with `value` in every weight, or in one entry of each tensor."""
    model = build_model(kind, 6)
    with torch.no_grad():
        for p in model.parameters():
            if everywhere:
                p.fill_(value)
            else:
                p.view(-1)[0] = value
    return model


def _linear(model: nn.Module, i: int) -> nn.Linear:
    layer = list(model.children())[i]
    assert isinstance(layer, nn.Linear)
    return layer


def _oracle_mlp(threshold: float, out_weight: float) -> nn.Module:
    """Hidden unit 0 is relu(x0 − t); the output is out_weight × that unit.

    With an infinite out_weight the logit is NaN exactly for records with x0 <= t (∞ × 0).
    """
    model = build_model("mlp", 6)
    first, last = _linear(model, 0), _linear(model, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        first.weight[0, 0] = 1.0
        first.bias[0] = -threshold
        last.weight[0, 0] = out_weight
    return model


def _finite_state(result: TrainResult) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in result.state.values())


def _finite_release(release: EvalRelease, bins: int) -> bool:
    hists = (release.hist_pos, release.hist_neg)
    return all(len(h) == bins and bool(np.isfinite(h).all()) for h in hists)


# --- what a round releases -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.03, 1 / 93])  # Opacus's own sampler takes 92 steps at 1/93
def test_one_round_releases_exactly_what_release_of_promised(rate: float) -> None:
    x, y = _data()
    cfg = _cfg(sample_rate=rate, epochs=2, total_rounds=3)
    sigma = noise_multiplier(cfg)
    promised = release_of(cfg, sigma)
    result = train_dp(build_model("logreg", 6), x, y, cfg, sigma, generator_seed=0)
    assert (result.noise_multiplier, result.sample_rate, result.steps) == promised
    assert promised == tuple(plan(cfg)[0][:3])
    k = round(1 / rate)
    assert promised == (1.0, 1 / k, 2 * k)


def test_release_of_needs_no_data_and_refuses_what_is_not_dp() -> None:
    assert release_of(_cfg(sample_rate=0.1, epochs=3), 2.0) == (2.0, 0.1, 30)
    for sigma in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            release_of(_cfg(), sigma)
    with pytest.raises(ValueError):
        release_of(_cfg(sample_rate=0.0), 1.0)


def test_nothing_but_the_noised_weights_depends_on_the_data() -> None:
    # moments: the update rule's state from the noised gradients alone; it stays on the node
    # (the runtime's MomentStore; tests/test_runtime_service.py checks it never goes on the wire)
    assert {f.name for f in dataclasses.fields(TrainResult)} == {
        "state",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "moments",
    }
    assert {f.name for f in dataclasses.fields(EvalRelease)} == {"hist_pos", "hist_neg"}


def test_the_node_invents_no_run_defaults() -> None:
    """Every setting comes from the run config (over the wire): a node fills no gap itself."""
    missing = dataclasses.MISSING
    for f in dataclasses.fields(DPTrainConfig):
        assert f.default is missing and f.default_factory is missing, f.name
    assert set(_BASE) == {f.name for f in dataclasses.fields(DPTrainConfig)}
    assert set(OPTIMIZERS) == set(OPTIMIZER_NAMES)


# --- learning and noise ----------------------------------------------------------------------


def test_training_learns_despite_noise() -> None:
    x, y = _data(4000)
    model = build_model("logreg", 6)
    cfg = _cfg(sample_rate=0.02, epochs=3, learning_rate=1.0)
    for _ in range(3):
        model.load_state_dict(train_dp(model, x, y, cfg, 1.0).state)
    p = torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).detach().numpy()
    assert binary_metrics(y, p)["roc_auc"] > 0.85


def _corner_data(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose mass sits in a corner of [0, 1] (like min-max-scaled amounts)."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 1.0, (n, 6))
    x = (raw / 60.0).clip(0, 1).astype(np.float32)  # ~all rows below 0.1
    logit = 3.0 * (np.log(raw[:, 0]) - 0.5 * np.log(raw[:, 1]))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, y


def test_adam_converges_where_sgd_stalls_on_corner_features() -> None:
    """The issue's failure: SGD at the old default (lr 0.5) barely moves on features squeezed
    into a corner of their range; Adam on the same privatised gradients (same ε) converges."""
    x, y = _corner_data()
    auc = {}
    for optimizer, lr in (("sgd", 0.5), ("adam", RunConfig.default("learning-rate"))):
        torch.manual_seed(0)
        model = build_model("logreg", 6)
        cfg = _cfg(sample_rate=0.02, epochs=1, learning_rate=lr, optimizer=optimizer)
        for rnd in range(5):
            model.load_state_dict(train_dp(model, x, y, cfg, 1.0, generator_seed=rnd).state)
        p = torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).detach().numpy()
        auc[optimizer] = binary_metrics(y, p)["roc_auc"]
    assert auc["adam"] > 0.8 and auc["adam"] > auc["sgd"] + 0.03, auc


def test_the_optimizer_changes_no_release_and_unknown_ones_are_refused() -> None:
    x, y = _data(500)
    releases = set()
    for optimizer in OPTIMIZERS:
        cfg = _cfg(optimizer=optimizer)
        result = train_dp(build_model("logreg", 6), x, y, cfg, 1.0, generator_seed=0)
        releases.add((result.noise_multiplier, result.sample_rate, result.steps))
        assert _finite_state(result)
    assert releases == {release_of(_cfg(), 1.0)}  # ε depends on (σ, q, steps) only
    with pytest.raises(ValueError, match="optimizer"):
        train_dp(build_model("logreg", 6), x, y, _cfg(optimizer="lbfgs"), 1.0)


def _train_from(start: dict[str, torch.Tensor], seed: int | None) -> torch.Tensor:
    x, y = _data(500)
    model = build_model("logreg", 6)
    model.load_state_dict(start)
    return train_dp(model, x, y, _cfg(sample_rate=0.1), 1.0, generator_seed=seed).state["0.weight"]


def test_noise_is_not_reproducible_from_the_run_config() -> None:
    """The coordinator knows the seed of the run: by default the DP noise comes from the OS."""
    start = build_model("logreg", 6).state_dict()
    assert not torch.allclose(_train_from(start, None), _train_from(start, None))


def test_a_generator_seed_makes_training_reproducible() -> None:
    start = build_model("logreg", 6).state_dict()
    assert torch.equal(_train_from(start, 7), _train_from(start, 7))
    assert not torch.allclose(_train_from(start, 7), _train_from(start, 8))


def test_fedprox_pulls_towards_the_global_model() -> None:
    x, y = _data(1000)
    start = build_model("logreg", 6).state_dict()
    drift = {}
    for mu in (0.0, 5.0):
        model = build_model("logreg", 6)
        model.load_state_dict(start)
        cfg = _cfg(sample_rate=0.05, epochs=3, proximal_mu=mu)
        state = train_dp(model, x, y, cfg, 0.5, generator_seed=0).state
        drift[mu] = float(sum((state[k] - start[k]).norm() for k in start))
    assert drift[5.0] < 0.7 * drift[0.0]


def test_target_epsilon_covers_training_and_evaluation() -> None:
    cfg = _cfg(target_epsilon=2.0, sample_rate=0.02, total_rounds=4, eval_noise=10.0)
    spent = epsilon([p[:3] for p in plan(cfg)], cfg.delta)
    assert 1.8 <= spent <= 2.0
    assert {p.purpose for p in plan(cfg)} == {"training", "evaluation"}


def test_a_separate_final_evaluation_is_planned_once_and_covered_by_the_target() -> None:
    """final-eval-noise: rounds − 1 evaluations at eval-noise, the final one at its own σ, and
    the calibrated training noise leaves room for exactly that (no more, no less)."""
    base = _cfg(target_epsilon=1.0, sample_rate=0.05, total_rounds=4, eval_noise=30.0)
    split = dataclasses.replace(base, final_eval_noise=5.0)
    evals = [p.noise_multiplier for p in plan(split) if p.purpose == "evaluation"]
    assert sorted(evals) == [5.0, 30.0, 30.0, 30.0]
    assert final_noise(split) == 5.0 and final_noise(base) == 30.0
    assert 0.99 <= epsilon([p[:3] for p in plan(split)], split.delta) <= 1.0
    # the precise final evaluation costs training noise: σ rises, the total ε does not
    assert noise_multiplier(split) > noise_multiplier(base)
    only_final = dataclasses.replace(split, eval_noise=0.0)
    assert [p.noise_multiplier for p in plan(only_final) if p.purpose == "evaluation"] == [5.0]


def test_a_small_target_scales_the_evaluations_up_instead_of_being_unreachable() -> None:
    """The default evaluation σs suit ε = 1; at ε = 0.5 they alone would spend more than the
    target. `fit_evaluations` scales them by one factor so they take at most EVAL_SHARE of it,
    and leaves a target they already fit (or a run without a target) unchanged."""
    cfg = _cfg(target_epsilon=0.5, sample_rate=0.1, total_rounds=10, eval_noise=50.0,
               final_eval_noise=4.5)  # fmt: skip
    fitted = fit_evaluations(cfg)
    factor = fitted.final_eval_noise / cfg.final_eval_noise
    assert factor > 1.0 and fitted.eval_noise == pytest.approx(cfg.eval_noise * factor)
    evals = [p[:3] for p in plan(fitted) if p.purpose == "evaluation"]
    assert epsilon(evals, cfg.delta) <= EVAL_SHARE * 0.5 * 1.01
    assert 0.49 <= epsilon([p[:3] for p in plan(fitted)], cfg.delta) <= 0.5
    for unchanged in (dataclasses.replace(cfg, target_epsilon=3.0),
                      dataclasses.replace(cfg, target_epsilon=0.0)):  # fmt: skip
        assert fit_evaluations(unchanged) == unchanged


# --- totality under hostile weights and any data ---------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("kind", ["logreg", "mlp"])
@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("everywhere", [True, False])
def test_hostile_weights_give_finite_releases(
    kind: str, value: float, everywhere: bool, optimizer: str
) -> None:
    x, y = _data(300)
    cfg = _cfg(sample_rate=0.1, optimizer=optimizer)
    result = train_dp(_filled(kind, value, everywhere), x, y, cfg, 1.0, generator_seed=0)
    assert _finite_state(result) and result.steps == release_of(cfg, 1.0)[2]
    release = evaluate(
        _filled(kind, value, everywhere), x, y, 5.0, 12, rng=np.random.default_rng(0)
    )
    assert _finite_release(release, 12)


def test_non_finite_incoming_weights_are_replaced_by_zeros() -> None:
    model = _filled("logreg", math.nan, everywhere=False)
    x, y = _data(200)
    state = train_dp(model, x, y, _cfg(learning_rate=0.0), 1.0, generator_seed=0).state
    assert float(state["0.weight"].view(-1)[0]) == 0.0 and float(state["0.bias"][0]) == 0.0
    assert all(bool(torch.isfinite(v).all()) for v in state.values())


@pytest.mark.parametrize("out_weight", [math.inf, 1e30, 3e38])
def test_the_nan_threshold_oracle_learns_nothing_from_the_release_form(out_weight: float) -> None:
    """Two data sets differing only in one record with x0 <= t: the same form, finite both times."""
    t = 0.5
    x, y = _data(400)
    above = x[:, 0] > t
    x_without, y_without = x[above], y[above]
    x_with = np.concatenate([x_without, np.full((1, 6), 0.1, dtype=np.float32)])
    y_with = np.concatenate([y_without, np.ones(1, dtype=np.float32)])
    cfg = _cfg(sample_rate=0.1, epochs=2)
    releases = []
    for xs, ys in ((x_without, y_without), (x_with, y_with)):
        ev = evaluate(_oracle_mlp(t, out_weight), xs, ys, 5.0, 10, rng=np.random.default_rng(1))
        assert _finite_release(ev, 10)
        tr = train_dp(_oracle_mlp(t, out_weight), xs, ys, cfg, 1.0, generator_seed=1)
        assert _finite_state(tr)
        releases.append((tr.steps, {k: v.shape for k, v in tr.state.items()}))
    assert releases[0] == releases[1]


def test_zero_rows_train_noise_only_steps_and_evaluate_to_noise() -> None:
    x, y = _data(0)
    cfg = _cfg(sample_rate=0.1, epochs=2)
    model = build_model("mlp", 6)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    result = train_dp(model, x, y, cfg, 1.0, generator_seed=0)
    assert (result.noise_multiplier, result.sample_rate, result.steps) == release_of(cfg, 1.0)
    assert {k: v.shape for k, v in result.state.items()} == shapes and _finite_state(result)
    release = evaluate(model, x, y, 2.0, 8, rng=np.random.default_rng(0))
    assert _finite_release(release, 8)
    noise = np.random.default_rng(0)  # all-zero histograms plus exactly the noise
    assert release.hist_pos == pytest.approx(noise.normal(0.0, 2.0, 8))
    assert release.hist_neg == pytest.approx(noise.normal(0.0, 2.0, 8))


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_one_row_trains_and_evaluates(kind: str) -> None:
    x, y = _data(1)
    cfg = _cfg(sample_rate=0.5)
    result = train_dp(build_model(kind, 6), x, y, cfg, 1.0, generator_seed=0)
    assert _finite_state(result) and result.steps == 2
    assert _finite_release(evaluate(build_model(kind, 6), x, y, 1.0, 5), 5)


def _noise_scale(rows: int, public_rows: int | None) -> float:
    """Spread of the released update when every gradient is 0 (logits saturated): noise alone."""
    model = build_model("mlp", 6)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _linear(model, 2).bias[0] = 1e6
    x, y = _data(rows)
    cfg = _cfg(sample_rate=0.1)
    state = train_dp(model, x, y, cfg, 1.0, generator_seed=3, public_rows=public_rows).state
    moved = torch.cat([v.flatten() for k, v in state.items() if k != "2.bias"])
    return float(moved.std())


def test_public_rows_keep_the_update_scale_independent_of_the_row_count() -> None:
    fixed = [_noise_scale(rows, public_rows=1000) for rows in (0, 1000)]
    assert 0.75 < fixed[0] / fixed[1] < 1.33
    # without it the denominator is q × actual rows: the noise scale tells how many rows
    assert _noise_scale(0, None) > 30 * _noise_scale(1000, None)


# --- the sensitivity bound -------------------------------------------------------------------


def _clipped_norms(grad_samples: list[torch.Tensor], c: float) -> torch.Tensor:
    """Per-sample norms after Opacus's flat clipping (its formula, recomputed here)."""
    norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in grad_samples], dim=1).norm(2, dim=1)
    factor = (c / (norms + 1e-6)).clamp(max=1.0)
    return factor * norms


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_dropping_non_finite_samples_bounds_every_clipped_gradient() -> None:
    """Huge finite weights overflow to inf activations: some per-sample gradients are NaN."""
    x, y = _data(64)
    model = _filled("mlp", 3e38, everywhere=False)
    with torch.no_grad():
        _linear(model, 0).weight[:, :] = 3e38  # every hidden unit overflows for every record
        _linear(model, 2).weight[0, 1] = -1.0  # inf − inf in the output: NaN logits and gradients
    gsm = GradSampleModule(model, loss_reduction="sum")
    logits = gsm(torch.from_numpy(x)).reshape(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(
        bounded_logits(logits), torch.from_numpy(y), reduction="sum"
    )
    loss.backward()
    samples: list[torch.Tensor] = [p.grad_sample for p in model.parameters()]  # type: ignore[attr-defined]
    assert any(not bool(torch.isfinite(g).all()) for g in samples)  # the attack is live
    finite_before = torch.stack([torch.isfinite(g.flatten(1)).all(1) for g in samples]).all(0)
    kept = [g[finite_before].clone() for g in samples]
    drop_non_finite_samples(model.parameters())
    assert all(bool(torch.isfinite(g).all()) for g in samples)
    assert all(torch.equal(g[finite_before], k) for g, k in zip(samples, kept, strict=True))
    assert all(bool((g[~finite_before] == 0).all()) for g in samples)
    assert bool((_clipped_norms(samples, 1.0) <= 1.0 + 1e-5).all())
    gsm.cleanup()


@pytest.mark.parametrize("value", HOSTILE)
def test_in_training_every_clipped_per_sample_gradient_is_within_c(
    value: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on the optimizer's clipping inside train_dp: finite inputs, norms ≤ C, every step."""
    c = 0.7
    seen: list[int] = []
    original: Callable[[DPOptimizer], None] = DPOptimizer.clip_and_accumulate

    def spy(self: DPOptimizer) -> None:
        samples = self.grad_samples
        assert all(bool(torch.isfinite(g).all()) for g in samples)
        if len(samples[0]):
            assert bool((_clipped_norms(samples, c) <= c * (1 + 1e-5)).all())
        seen.append(len(samples[0]))
        original(self)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    model = _filled("mlp", value, everywhere=False)
    with torch.no_grad():
        _linear(model, 0).weight[:, :] = 3e38 if math.isfinite(value) else value
    x, y = _data(200)
    cfg = _cfg(sample_rate=0.1, max_grad_norm=c)
    result = train_dp(model, x, y, cfg, 1.0, generator_seed=0)
    assert len(seen) == result.steps == 10 and sum(seen) > 0 and _finite_state(result)


# --- evaluation ------------------------------------------------------------------------------


def test_evaluation_releases_only_noised_histograms() -> None:
    x, y = _data(800)
    out = evaluate(build_model("logreg", 6), x, y, noise=10.0, bins=20)
    assert len(out.hist_pos) == 20 and len(out.hist_neg) == 20
    exact_pos = int(y.sum())
    assert sum(out.hist_pos) != exact_pos  # noised (a tie has probability ~0)
    assert abs(sum(out.hist_pos) - exact_pos) < 6 * 10 * np.sqrt(20)


def test_evaluation_noise_comes_from_the_injected_generator_or_the_os() -> None:
    x, y = _data(300)
    model = build_model("logreg", 6)

    def run(rng: np.random.Generator | None) -> EvalRelease:
        return evaluate(model, x, y, 3.0, 10, rng=rng)

    assert run(np.random.default_rng(5)) == run(np.random.default_rng(5))
    assert run(None) != run(None)


@pytest.mark.parametrize("noise", [0.0, -1.0, math.inf, math.nan])
def test_evaluation_never_releases_exact_counts(noise: float) -> None:
    x, y = _data(10)
    with pytest.raises(ValueError):
        evaluate(build_model("logreg", 6), x, y, noise, 10)


# --- clipping norm: "auto" follows the node's own noise --------------------------------------


def test_auto_clip_norm_is_bounded_and_falls_as_noise_rises() -> None:
    sigmas = [0.1, 0.5, 1.75, 2.5, 4.0, 7.6, 50.0]
    norms = [auto_clip_norm(s) for s in sigmas]
    assert norms == sorted(norms, reverse=True)
    assert norms[0] == AUTO_CLIP_MAX and norms[-1] == AUTO_CLIP_MIN
    assert AUTO_CLIP_MIN < auto_clip_norm(4.0) < AUTO_CLIP_MAX
    assert auto_clip_norm(math.nan) == AUTO_CLIP_MIN  # never more than the bound on bad input
    assert clip_norm(0.7, 0.5) == 0.7  # an explicit norm is used as given


@pytest.mark.parametrize("sigma", [0.5, 7.6])
def test_max_grad_norm_zero_trains_with_the_auto_norm(
    monkeypatch: pytest.MonkeyPatch, sigma: float
) -> None:
    x, y = _data(400)
    used: list[float] = []
    original = DPOptimizer.clip_and_accumulate

    def spy(self: DPOptimizer) -> None:
        used.append(self.max_grad_norm)
        original(self)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    first, second = build_model("logreg", 6), build_model("logreg", 6)
    second.load_state_dict(first.state_dict())
    auto = train_dp(first, x, y, _cfg(max_grad_norm=0.0), sigma, generator_seed=3)
    fixed = _cfg(max_grad_norm=auto_clip_norm(sigma))
    explicit = train_dp(second, x, y, fixed, sigma, generator_seed=3)
    assert set(used) == {auto_clip_norm(sigma)}
    for k in auto.state:
        assert torch.equal(auto.state[k], explicit.state[k])


# --- the update rule's state across a run's rounds -------------------------------------------


def _adam_round(moments: Moments | None, start: nn.Module, seed: int = 5) -> TrainResult:
    x, y = _data(400)
    model = build_model("logreg", 6)
    model.load_state_dict(start.state_dict())
    cfg = _cfg(optimizer="adam", learning_rate=0.05)
    return train_dp(model, x, y, cfg, 1.0, generator_seed=seed, moments=moments)


def test_adam_moments_carry_over_and_change_the_next_round() -> None:
    start = build_model("logreg", 6)
    first = _adam_round(None, start)
    assert set(first.moments) == {0, 1}  # weight and bias
    assert all(set(m) == {"step", "exp_avg", "exp_avg_sq"} for m in first.moments.values())
    assert all(float(m["step"]) == first.steps for m in first.moments.values())
    resumed = _adam_round(first.moments, start)
    fresh = _adam_round(None, start)
    assert all(float(m["step"]) == 2 * first.steps for m in resumed.moments.values())
    assert not torch.equal(resumed.state["0.weight"], fresh.state["0.weight"])
    assert float(first.moments[0]["step"]) == first.steps  # the input was not modified


@pytest.mark.parametrize(
    "spoil",
    [
        lambda m: m[0].update(exp_avg=torch.zeros(3)),  # another model's shape
        lambda m: m[0]["exp_avg_sq"].fill_(math.nan),
        lambda m: m.pop(1),  # one parameter missing
        lambda m: m[0].pop("exp_avg"),
    ],
    ids=["shape", "non-finite", "missing-parameter", "missing-key"],
)
def test_moments_that_do_not_fit_are_ignored(spoil: Callable[[Moments], object]) -> None:
    start = build_model("logreg", 6)
    moments = _adam_round(None, start).moments
    spoil(moments)
    resumed = _adam_round(moments, start)
    fresh = _adam_round(None, start)
    assert torch.equal(resumed.state["0.weight"], fresh.state["0.weight"])  # started afresh


def test_sgd_keeps_no_moments() -> None:
    x, y = _data(200)
    result = train_dp(build_model("logreg", 6), x, y, _cfg(), 1.0, generator_seed=0)
    assert result.moments == {}
