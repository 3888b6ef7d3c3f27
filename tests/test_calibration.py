"""Platt scaling on the final DP releases: it improves log loss, recovers a known map, and is
folded into the published weights exactly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from common.estimation import Affine
from common.metrics import logit_histogram
from common.model import build_model, predict_logits
from server.calibration import apply_affine, output_layer, publish_calibrated


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _miscalibrated(
    n: int, slope: float, intercept: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits z of a model whose true P(y = 1 | z) is σ(slope·z + intercept)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 2.5, n)
    y = (rng.random(n) < _sigmoid(slope * z + intercept)).astype(float)
    return y, z


def _releases(
    y: np.ndarray, z: np.ndarray, nodes: int, sigma: float, bins: int, seed: int
) -> list[SimpleNamespace]:
    """What `nodes` nodes release on finish: each its share's histograms plus N(0, σ²)."""
    rng = np.random.default_rng(seed)
    part = rng.integers(0, nodes, y.size)
    out = []
    for k in range(nodes):
        pos, neg = logit_histogram(y[part == k], z[part == k], bins)
        out.append(
            SimpleNamespace(
                hist_pos=(pos + rng.normal(0, sigma, bins)).tolist(),
                hist_neg=(neg + rng.normal(0, sigma, bins)).tolist(),
                noise=sigma,
            )
        )
    return out


def _logreg_state(n_features: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("logreg", n_features).state_dict()


@pytest.mark.parametrize(("slope", "intercept"), [(0.5, -0.4), (1.8, 0.7), (1.0, -1.0)])
def test_calibration_recovers_a_known_platt_map_and_improves_log_loss(
    slope: float, intercept: float
) -> None:
    y, z = _miscalibrated(40_000, slope, intercept, seed=1)
    releases = _releases(y, z, nodes=3, sigma=5.0, bins=12, seed=2)
    pub = publish_calibrated("logreg", _logreg_state(), releases, draws=100)
    assert pub.calibrated and pub.report is not None
    fitted = pub.report.calibration
    assert fitted.slope == pytest.approx(slope, rel=0.1)
    assert fitted.intercept == pytest.approx(intercept, abs=0.15)
    raw = log_loss(y, np.clip(_sigmoid(z), 1e-15, 1 - 1e-15))
    calibrated = log_loss(y, _sigmoid(fitted.slope * z + fitted.intercept))
    ideal = log_loss(y, _sigmoid(slope * z + intercept))
    assert calibrated < raw - 0.005  # clearly better than the model as trained
    assert calibrated < ideal + 0.002  # and nearly as good as the true map
    # the card: the reported log loss is that of the calibrated model, with its interval
    lo, hi = pub.report.metrics["log_loss"].ci95
    assert lo <= calibrated <= hi
    rate = y.mean()
    base = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert pub.metrics["log_loss"] < base


def test_a_well_calibrated_model_is_left_nearly_unchanged() -> None:
    y, z = _miscalibrated(40_000, 1.0, 0.0, seed=4)
    pub = publish_calibrated(
        "logreg", _logreg_state(), _releases(y, z, 3, 5.0, 12, seed=5), draws=50
    )
    assert pub.report is not None
    assert pub.report.calibration.slope == pytest.approx(1.0, abs=0.08)
    assert pub.report.calibration.intercept == pytest.approx(0.0, abs=0.12)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_the_affine_map_changes_the_published_logits_exactly(kind: str) -> None:
    torch.manual_seed(3)
    model = build_model(kind, 7)
    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    before = predict_logits(model, x).astype(np.float64)
    affine = Affine(slope=0.37, intercept=-1.25)
    state = apply_affine(model.state_dict(), affine)
    published = build_model(kind, 7)
    published.load_state_dict(state)
    after = predict_logits(published, x).astype(np.float64)
    assert np.allclose(after, 0.37 * before - 1.25, atol=1e-5)
    # only the output layer changed; the original weights were not touched in place
    w, b = output_layer(state)
    assert w == ("0.weight" if kind == "logreg" else "2.weight")
    assert b == ("0.bias" if kind == "logreg" else "2.bias")
    for key, value in model.state_dict().items():
        if key not in (w, b):
            assert torch.equal(value, state[key])
    assert np.allclose(predict_logits(model, x), before)


def test_maps_that_would_reverse_or_break_the_ranking_are_refused() -> None:
    for bad in (Affine(0.0, 0.0), Affine(-1.0, 0.0), Affine(math.nan, 0.0), Affine(1.0, math.inf)):
        with pytest.raises(ValueError):
            apply_affine(_logreg_state(), bad)
    with pytest.raises(ValueError):
        output_layer({"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(4)})


def test_no_final_release_publishes_the_weights_as_trained() -> None:
    state = _logreg_state()
    pub = publish_calibrated("logreg", state, [], draws=10)
    assert pub.report is None and not pub.calibrated and pub.metrics == {}
    assert all(torch.equal(state[k], pub.state[k]) for k in state)


def test_calibrate_off_reports_the_raw_model_and_keeps_its_weights() -> None:
    y, z = _miscalibrated(20_000, 0.5, -0.4, seed=7)
    state = _logreg_state()
    pub = publish_calibrated(
        "logreg", state, _releases(y, z, 2, 5.0, 12, seed=8), calibrate=False, draws=50
    )
    assert not pub.calibrated and pub.report is not None
    assert pub.report.calibration == Affine(1.0, 0.0)
    assert all(torch.equal(state[k], pub.state[k]) for k in state)
    raw = log_loss(y, np.clip(_sigmoid(z), 1e-15, 1 - 1e-15))
    lo, hi = pub.report.metrics["log_loss"].ci95
    assert lo <= raw <= hi
    assert pub.metrics["calibration"]["applied"] is False


def test_the_card_holds_plain_floats_and_intervals_and_says_what_they_cover() -> None:
    y, z = _miscalibrated(10_000, 0.8, -0.5, seed=9)
    pub = publish_calibrated("logreg", _logreg_state(), _releases(y, z, 3, 8.0, 12, 10), draws=50)
    card = pub.metrics
    assert isinstance(card["roc_auc"], float) and isinstance(card["log_loss"], float)
    for m in ("roc_auc", "log_loss", "brier"):
        est = card["estimates"][m]
        assert est["ci95"][0] <= est["estimate"] <= est["ci95"][1]
        assert card[m] == est["estimate"]
    assert "fixed" in card["interval_covers"]
    assert card["calibration"]["applied"] and "no extra epsilon" in card["calibration"]["method"]


def test_the_coordinator_summarises_rounds_and_publishes_from_wire_releases() -> None:
    """`round_summary` and the publish step on `pb.Evaluated` as the strategy records them."""
    from common.protos.atoll.node.v1 import runtime_pb2 as pb
    from server.fleet import Identities
    from server.server_app import round_summary

    y, z = _miscalibrated(6_000, 0.7, -0.3, seed=12)
    evals = {}
    for node, r in enumerate(_releases(y, z, 3, 6.0, 12, seed=13), start=1):
        e = pb.Evaluated(hist_pos=r.hist_pos, hist_neg=r.hist_neg, noise=r.noise)
        e.budget.epsilon_run = 0.5
        evals[node] = e
    ids = Identities({1: "a", 2: "b", 3: "c"}, audit=None)  # type: ignore[arg-type]
    summary = round_summary(2, evals, ids, noise=6.0)
    assert summary["round"] == 2 and set(summary["nodes"]) == {"a", "b", "c"}
    g = summary["global"]
    assert isinstance(g["roc_auc"], float) and g["ci95"]["roc_auc"][0] <= g["roc_auc"]
    assert abs(g["examples"] - y.size) < 200
    assert all(n["epsilon"] == 0.5 and "ci95" in n for n in summary["nodes"].values())
    assert round_summary(1, {}, ids) == {"round": 1, "nodes": {}}

    pub = publish_calibrated("logreg", _logreg_state(), evals.values(), 6.0, draws=50)
    assert pub.calibrated and pub.report is not None and pub.report.nodes == 3
    assert pub.report.noise_sd == pytest.approx(6.0 * math.sqrt(3))
