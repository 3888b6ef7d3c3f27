"""The additive model: a fixed piecewise-linear basis from the contract's bounds, one linear layer.

Its knots come from the contract alone (the same model for any data), Opacus wraps it and a DP
step trains only the linear layer, each spelling of the basis reproduces a piecewise-linear
function exactly, and the published weights load, calibrate and explain per contract feature.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from client.training.config import DPTrainConfig
from client.training.dp_sgd import train_dp
from common.contract import Contract, NumericFeature, parse_contract
from common.encoding import Encoder
from common.estimation import Affine
from common.model import (
    ADDITIVE,
    BASIS_KINDS,
    BasisKind,
    BasisLayout,
    PiecewiseLinearBasis,
    basis_layout,
    build_model,
    load_model,
    predict_logits,
    weights_to_bytes,
)
from server.api.explain import batched_occlusion, neutral_baseline, occlusion
from server.calibration import apply_affine


def _contract() -> Contract:
    """Two plain numerics, one log1p-standardised numeric, a categorical and a binary."""
    return parse_contract(
        {
            "name": "additive-test",
            "version": 1,
            "task": "churn",
            "label": {"column": "churned", "positive": "Yes"},
            "id": "customer_id",
            "features": [
                {"name": "tenure", "type": "numeric", "min": 0, "max": 72},
                {"name": "plan", "type": "categorical", "vocabulary": ["basic", "pro"]},
                {
                    "name": "spend",
                    "type": "numeric",
                    "min": 0,
                    "max": 10000,
                    "transform": "log1p",
                    "center": 5.0,
                    "scale": 2.0,
                },
                {"name": "paperless", "type": "binary"},
                {"name": "age", "type": "numeric", "min": 18, "max": 100},
            ],
        }
    )


ENCODER = Encoder(_contract())
NUMERIC = [f for f in _contract().features if isinstance(f, NumericFeature)]


def _records(n: int, seed: int) -> np.ndarray:
    """Encoded rows within the contract's bounds (numerics anywhere in their encoded range)."""
    rng = np.random.default_rng(seed)
    layout = basis_layout(ENCODER)
    x = np.zeros((n, ENCODER.n_features), dtype=np.float32)
    for c, lo, hi in zip(layout.columns, layout.lo, layout.hi, strict=True):
        x[:, c] = rng.uniform(lo, hi, n)
    plan = ENCODER.groups["plan"]
    x[np.arange(n), rng.choice(plan, n)] = 1.0
    x[:, ENCODER.groups["paperless"][0]] = rng.integers(0, 2, n)
    return x


def _model(basis: BasisKind = "ramp", knots: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        ADDITIVE, ENCODER.n_features, layout=basis_layout(ENCODER, knots=knots, basis=basis)
    )


def _basis(model: nn.Module) -> PiecewiseLinearBasis:
    stage = list(model.children())[0]
    assert isinstance(stage, PiecewiseLinearBasis)
    return stage


def _linear(model: nn.Module) -> nn.Linear:
    layer = list(model.children())[-1]
    assert isinstance(layer, nn.Linear)
    return layer


# --- the basis is the contract's, never the data's ---------------------------------------------


def test_knots_are_uniform_over_each_numeric_features_encoded_contract_bounds() -> None:
    layout = basis_layout(ENCODER, knots=4)
    assert layout.columns == tuple(ENCODER.groups[f.name][0] for f in NUMERIC)
    assert list(zip(layout.lo, layout.hi, strict=True)) == [f.encoded_bounds for f in NUMERIC]
    # the standardised log1p feature's bounds are in its encoded space, not [0, 1]
    spend = _contract().feature("spend")
    assert isinstance(spend, NumericFeature)
    lo, hi = spend.encoded_bounds
    assert lo == pytest.approx(-2.5) and hi == pytest.approx((math.log1p(10000) - 5) / 2)
    grid = layout.knot_grid()
    assert grid.shape == (3, 6)
    for row, (a, b) in zip(grid, zip(layout.lo, layout.hi, strict=True), strict=True):
        assert row[0] == a and row[-1] == b
        assert np.allclose(np.diff(row), (b - a) / 5)


def test_the_model_is_the_same_for_any_data_and_only_its_linear_layer_is_state() -> None:
    one, two = _model(seed=3), _model(seed=3)
    assert set(one.state_dict()) == {"1.weight", "1.bias"}  # the basis is not in the weights
    assert not list(_basis(one).parameters())
    before = {k: v.clone() for k, v in _basis(one).named_buffers()}
    # train it on two unrelated data sets: the basis does not move, whatever the data
    for seed, scale in ((0, 1.0), (1, 0.01)):
        x = _records(300, seed) * np.float32(scale)
        y = (np.random.default_rng(seed).random(300) < 0.3).astype(np.float32)
        train_dp(one, x, y, _dp_config(), 1.0, generator_seed=seed)
    for name, buf in _basis(one).named_buffers():
        assert torch.equal(buf, before[name]), name
        assert torch.equal(buf, dict(_basis(two).named_buffers())[name]), name
    ramps = PiecewiseLinearBasis(basis_layout(ENCODER))(torch.from_numpy(_records(5, 9)))
    assert torch.equal(_basis(one)(torch.from_numpy(_records(5, 9))), ramps)


def test_the_additive_kind_needs_the_contracts_layout_for_the_same_encoding() -> None:
    with pytest.raises(ValueError, match="basis_layout"):
        build_model(ADDITIVE, ENCODER.n_features)
    with pytest.raises(ValueError, match="same contract"):
        build_model(ADDITIVE, ENCODER.n_features + 1, layout=basis_layout(ENCODER))
    with pytest.raises(ValueError, match="additive"):
        build_model("gam", ENCODER.n_features)
    with pytest.raises(ValueError, match="hi > lo"):
        BasisLayout(3, (0,), (1.0,), (1.0,))
    with pytest.raises(ValueError, match="distinct"):
        BasisLayout(3, (0, 0), (0.0, 0.0), (1.0, 1.0))
    # the other kinds ignore it, so callers that have the contract can always pass it
    plain = build_model("logreg", ENCODER.n_features, layout=basis_layout(ENCODER))
    assert set(plain.state_dict()) == {"0.weight", "0.bias"}


# --- DP-SGD ------------------------------------------------------------------------------------


def _dp_config(**overrides: Any) -> DPTrainConfig:
    values: dict[str, Any] = {
        "epochs": 1,
        "sample_rate": 0.1,
        "learning_rate": 0.05,
        "learning_rate_final": 1.0,
        "max_grad_norm": 1.0,
        "noise_multiplier": 1.0,
        "target_epsilon": 0.0,
        "delta": 1e-5,
        "total_rounds": 1,
        "eval_noise": 0.0,
        "eval_bins": 12,
        "proximal_mu": 0.0,
        "optimizer": "adam",
        "final_eval_noise": 0.0,
        "drift_reference_noise": 0.0,
        "drift_bins": 10,
    }
    names = {f.name for f in dataclasses.fields(DPTrainConfig)}
    return DPTrainConfig(**{k: v for k, v in {**values, **overrides}.items() if k in names})


@pytest.mark.filterwarnings("ignore:Full backward hook")  # the input needs no gradient
@pytest.mark.parametrize("basis", BASIS_KINDS)
def test_opacus_computes_per_sample_gradients_and_a_dp_step_moves_only_the_linear_layer(
    basis: BasisKind,
) -> None:
    model = _model(basis)
    x = torch.from_numpy(_records(64, 1))
    y = torch.from_numpy((np.random.default_rng(1).random(64) < 0.4).astype(np.float32))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dp = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=64,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(0),
    )
    optimizer.zero_grad()
    loss = nn.functional.binary_cross_entropy_with_logits(dp(x).reshape(-1), y, reduction="sum")
    loss.backward()
    weight = _linear(model).weight
    grad_sample = getattr(weight, "grad_sample", None)
    assert isinstance(grad_sample, torch.Tensor)
    assert grad_sample.shape == (64, 1, basis_layout(ENCODER, basis=basis).n_outputs)
    optimizer.step()
    dp.cleanup()
    after = model.state_dict()
    assert set(after) == set(start)
    assert all(bool(torch.isfinite(v).all()) for v in after.values())
    assert not torch.equal(after["1.weight"], start["1.weight"])


def test_the_nodes_train_dp_runs_the_additive_model_as_it_runs_logreg() -> None:
    x = _records(2000, 4)
    tenure = ENCODER.groups["tenure"][0]
    # a U-shaped effect of tenure (encoded 0..1), which a linear term cannot express
    logit = 6.0 * (x[:, tenure] - 0.5) ** 2 - 1.0
    y = (np.random.default_rng(4).random(2000) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    model = _model("ramp")
    result = train_dp(model, x, y, _dp_config(epochs=5), 0.5, generator_seed=0)
    assert result.steps == 50
    assert set(result.state) == {"1.weight", "1.bias"}
    z = predict_logits(model, x)
    ends = (x[:, tenure] < 0.15) | (x[:, tenure] > 0.85)
    middle = (x[:, tenure] > 0.35) & (x[:, tenure] < 0.65)
    assert z[ends].mean() > z[middle].mean() + 0.3  # it learned the U


# --- expressiveness: exactly the piecewise-linear functions on the knots -----------------------


def _set_function(model: nn.Module, basis: BasisKind, values: np.ndarray, column: int) -> None:
    """Weights whose logit is the piecewise-linear interpolation of `values` at the knots of
    numeric feature `column` (index into the layout), and 0 for every other column."""
    layout = basis_layout(ENCODER, knots=len(values) - 2, basis=basis)
    knots = layout.knot_grid()[column]
    lo, hi = layout.lo[column], layout.hi[column]
    slopes = np.diff(values) / np.diff(knots)
    passthrough = (
        list(range(ENCODER.n_features))
        if basis == "hinge"
        else [j for j in range(ENCODER.n_features) if j not in layout.columns]
    )
    w = np.zeros(layout.n_outputs)
    start = len(passthrough) + column * layout.per_column
    own = slice(start, start + layout.per_column)
    if basis == "hat":
        w[own], bias = values, 0.0
    elif basis == "ramp":
        w[own], bias = np.diff(values), values[0]
    else:
        w[passthrough.index(layout.columns[column])] = slopes[0]
        w[own] = np.diff(slopes) * (hi - lo)
        bias = values[0] - slopes[0] * lo
    layer = _linear(model)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w[None, :], dtype=torch.float32))
        layer.bias.fill_(float(bias))


@pytest.mark.parametrize("basis", BASIS_KINDS)
@pytest.mark.parametrize("column", [0, 1, 2])
def test_each_spelling_reproduces_a_piecewise_linear_function_exactly(
    basis: BasisKind, column: int
) -> None:
    knots = 5
    model = _model(basis, knots)
    values = np.random.default_rng(column).normal(0, 2, knots + 2)
    _set_function(model, basis, values, column)
    layout = basis_layout(ENCODER, knots=knots, basis=basis)
    grid = layout.knot_grid()[column]
    lo, hi = layout.lo[column], layout.hi[column]
    x = _records(400, 7)
    c = layout.columns[column]
    x[:8, c] = grid[[0, 1, 2, 3, 4, 5, 6, 3]]  # exactly on the knots too
    got = predict_logits(model, x)
    want = np.interp(x[:, c], grid, values)
    assert np.allclose(got, want, atol=1e-5 * max(1.0, float(np.abs(values).max())))
    # beyond the bounds (not produced by the encoder) it is clamped, like the encoder clamps
    x[:2, c] = [lo - 3 * (hi - lo), hi + 3 * (hi - lo)]
    assert np.allclose(predict_logits(model, x[:2]), values[[0, -1]], atol=1e-4)


def test_a_function_with_a_kink_between_knots_is_not_reproduced() -> None:
    """The span is the knots' piecewise-linear functions, nothing more: a kink off the knots
    leaves a best-fit error."""
    layout = basis_layout(ENCODER, knots=2, basis="hat")
    xs = np.linspace(layout.lo[0], layout.hi[0], 301)
    x = np.zeros((301, ENCODER.n_features), dtype=np.float32)
    x[:, layout.columns[0]] = xs
    features = PiecewiseLinearBasis(layout)(torch.from_numpy(x)).numpy().astype(np.float64)
    target = np.abs(xs - 0.5 * (layout.lo[0] + layout.hi[0]))  # kink in the middle of a piece
    coef, *_ = np.linalg.lstsq(features, target, rcond=None)
    assert np.abs(features @ coef - target).max() > 0.05


# --- published: weights, calibration and reason codes -----------------------------------------


def test_published_weights_load_calibrate_and_explain_per_contract_feature() -> None:
    layout = basis_layout(ENCODER)
    model = _model()
    with torch.no_grad():
        _linear(model).weight.normal_(0, 1)
    x = _records(50, 5)
    z = predict_logits(model, x)
    loaded = load_model(ADDITIVE, ENCODER.n_features, weights_to_bytes(model.state_dict()),
                        layout=layout)  # fmt: skip
    assert np.array_equal(predict_logits(loaded, x), z)
    # Platt map folded into the output layer: the logit becomes exactly a·z + b
    calibrated = build_model(ADDITIVE, ENCODER.n_features, layout=layout)
    calibrated.load_state_dict(apply_affine(model.state_dict(), Affine(0.7, -0.2)))
    assert np.allclose(predict_logits(calibrated, x), 0.7 * z - 0.2, atol=1e-5)
    # reason codes: one per contract feature; additive, so they add up to logit − baseline's
    baseline = neutral_baseline(ENCODER)
    logits, contributions = batched_occlusion(model, x, ENCODER, baseline)
    assert contributions.shape == (50, len(_contract().features))
    _, reference = occlusion(model, x, ENCODER, baseline)
    assert np.allclose(contributions, reference, atol=1e-5)
    at_baseline = predict_logits(model, baseline[None, :])[0]
    assert np.allclose(contributions.sum(axis=1), logits - at_baseline, atol=1e-4)
