"""The fast scoring path gives today's answers: the record checks, the encoding, the reason codes.

Reference = the path the API used before: a per-field check into a DataFrame, `Encoder.encode`,
`occlusion` (one forward pass per feature), `top_reason_codes`. The fast path: `RecordChecker`
(common cases without allocating), `Encoder.encode_columns`, exact linear reason codes
(`LinearExplainer`) for logistic regression and ONE batched forward pass for an MLP.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.contract import Contract, load_contract
from common.encoding import Encoder
from common.model import build_model
from server.api import explain
from server.api import records as record_checks
from server.api.explain import (
    LinearExplainer,
    batched_occlusion,
    neutral_baseline,
    occlusion,
    top_reason_codes,
)
from server.api.records import RecordChecker, RecordProblem, RecordsInvalid
from server.api.scoring import Scorer

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"


def reference_check(
    contract: Contract, records: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, list[object]], list[list[str]]]:
    """The check as the API made it before (verbatim, minus the frame)."""
    ignored = {contract.id, contract.label.column, *contract.drop}
    known = set(contract.feature_names)
    problems: list[RecordProblem] = []
    warnings: list[list[str]] = []
    columns: dict[str, list[object]] = {f.name: [] for f in contract.features}
    for i, record in enumerate(records):
        notes: list[str] = []
        for key in record:
            if key not in known and key not in ignored:
                shown = record_checks._shown(key)
                problem = f"unknown field '{shown}' — not in contract {contract.name}"
                problems.append(RecordProblem(i, record_checks._shown(key), problem))
        for f in contract.features:
            checked = record_checks._check(f, record.get(f.name))
            if checked.problem is not None:
                problems.append(RecordProblem(i, f.name, checked.problem))
            if checked.warning is not None:
                notes.append(checked.warning)
            columns[f.name].append(checked.value)
        warnings.append(notes)
    if problems:
        raise RecordsInvalid(problems)
    return columns, warnings


def reference_score(
    contract: Contract, model: torch.nn.Module, records: list[dict[str, Any]], top_k: int
) -> tuple[np.ndarray, np.ndarray, list[list[explain.ReasonCode]]]:
    encoder = Encoder(contract)
    columns, _warnings = reference_check(contract, records)
    x = encoder.encode(pd.DataFrame(columns, dtype=object)).x
    logits, contributions = occlusion(model, x, encoder, neutral_baseline(encoder))
    return logits, contributions, top_reason_codes(contributions, contract.feature_names, top_k)


@pytest.fixture(scope="module")
def telco() -> Contract:
    return load_contract(CONTRACTS / "telco_churn.yaml")


@pytest.fixture(scope="module")
def telco_records(telco_csv: Path, telco: Contract) -> list[dict[str, Any]]:
    from client.data_source import read_records

    frame = read_records(telco_csv).head(400)
    numeric = {f.name for f in telco.features if f.type == "numeric"}
    rows = frame[telco.feature_names].to_dict(orient="records")
    # as the API receives them: numbers as JSON numbers (a blank TotalCharges stays blank)
    return [{k: float(v) if k in numeric and v.strip() else v for k, v in r.items()} for r in rows]


def _logreg(contract: Contract, seed: int, scale: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("logreg", Encoder(contract).n_features)
    with torch.no_grad():
        model[0].weight.mul_(scale * 10)  # weights of a trained churn model's size (|w| ~ 1-3)
    return model.eval()


# ---- record checks -----------------------------------------------------------------------------

CELL = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 100),
    st.sampled_from(["", "  ", "Yes", "No", " Yes", "1", "0", "DSL", "Fiber optic ", "gold"]),
    st.sampled_from(["Month-to-month", "Two year", "Electronic check", "No internet service"]),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_record_checker_equals_the_field_by_field_check(data: st.DataObject) -> None:
    contract = load_contract(CONTRACTS / "telco_churn.yaml")
    names = [*contract.feature_names, contract.id, contract.label.column, "gender", "extra"]
    records = data.draw(
        st.lists(st.dictionaries(st.sampled_from(names), CELL), min_size=1, max_size=5)
    )
    try:
        expected: Any = reference_check(contract, records)
    except RecordsInvalid as exc:
        expected = exc.problems
    try:
        got: Any = RecordChecker(contract).check(records)
    except RecordsInvalid as exc:
        got = exc.problems
    assert got == expected
    if isinstance(got, tuple):  # same values, same types (1 vs 1.0 matters to the encoder)
        for name in contract.feature_names:
            assert [type(v) for v in got[0][name]] == [type(v) for v in expected[0][name]]


# ---- reason codes ------------------------------------------------------------------------------


class Float64(torch.nn.Module):
    """The same model evaluated in float64: `occlusion` without float32 rounding."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.double())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_reason_codes_equal_occlusion_within_1e_6(
    telco: Contract, telco_records: list[dict[str, Any]], seed: int
) -> None:
    model = _logreg(telco, seed)
    scorer = Scorer(telco, model)
    assert scorer.linear is not None
    records = [r for r in telco_records if str(r["TotalCharges"]).strip()]
    out = scorer.evaluate(records)
    # occlusion itself, evaluated exactly (float64): equal to far better than 1e-6
    logits, contributions, codes = reference_score(telco, Float64(model), records, top_k=5)
    assert np.abs(out.logits - logits).max() < 1e-9
    assert np.abs(out.contributions - contributions).max() < 1e-9
    assert np.abs(contributions).max() > 1  # not a vacuous comparison
    # today's float32 occlusion: within 1e-6 per unit of logit (its own float32 rounding)
    logits32, contributions32, codes32 = reference_score(telco, model, records, top_k=5)
    scale = np.maximum(1.0, np.abs(logits32))
    assert (np.abs(out.logits - logits32) / scale).max() < 1e-6
    assert (np.abs(out.contributions - contributions32) / scale[:, None]).max() < 1e-6
    # the ranking is today's: same features, same order (no near-ties in these records)
    got = [[c.feature for c in s.reason_codes] for s in scorer.score(records, top_k=5)]
    assert got == [[c.feature for c in row] for row in codes32]
    assert got == [[c.feature for c in row] for row in codes]


def test_linear_contributions_are_exact_w_times_x_minus_baseline(telco: Contract) -> None:
    """Independent of occlusion: each contribution is Σ w_c (x_c − b_c) over the feature's
    columns, and the contributions add up to logit − logit(all features at baseline)."""
    model = _logreg(telco, 7)
    encoder = Encoder(telco)
    base = neutral_baseline(encoder).astype(np.float64)
    rng = np.random.default_rng(0)
    x = rng.random((50, encoder.n_features)).astype(np.float32)
    explainer = LinearExplainer.of(model, encoder, neutral_baseline(encoder))
    assert explainer is not None
    logits, contributions = explainer.explain(x)
    w = model[0].weight.detach().numpy().astype(np.float64)[0]
    b = float(model[0].bias.detach().numpy()[0])
    for j, name in enumerate(telco.feature_names):
        cols = encoder.groups[name]
        expected = ((x[:, cols].astype(np.float64) - base[cols]) * w[cols]).sum(axis=1)
        np.testing.assert_allclose(contributions[:, j], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(logits, x.astype(np.float64) @ w + b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        contributions.sum(axis=1), logits - (base @ w + b), rtol=0, atol=1e-9
    )


def test_exact_ties_keep_contract_order(telco: Contract) -> None:
    encoder = Encoder(telco)
    w = np.zeros(encoder.n_features)
    first, second = telco.feature_names[3], telco.feature_names[0]  # tenure, SeniorCitizen
    w[encoder.groups[first][0]] = 1.0  # tenure x in [0, 1], baseline 0.5
    w[encoder.groups[second][0]] = -1.0  # binary, baseline 0.5
    explainer = LinearExplainer(w, 0.0, encoder, neutral_baseline(encoder))
    x = np.zeros((1, encoder.n_features), dtype=np.float32)
    x[0, encoder.groups[first][0]] = 1.0  # +0.5
    x[0, encoder.groups[second][0]] = 1.0  # -0.5: an exact tie in |contribution|
    _logits, contributions = explainer.explain(x)
    [codes] = top_reason_codes(contributions, telco.feature_names, 2)
    assert [c.feature for c in codes] == [second, first]  # contract order
    assert [c.contribution for c in codes] == [-0.5, 0.5]


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_reason_codes_in_one_pass_equal_occlusion(
    telco: Contract, telco_records: list[dict[str, Any]], seed: int
) -> None:
    torch.manual_seed(seed)
    model = build_model("mlp", Encoder(telco).n_features).eval()
    scorer = Scorer(telco, model)
    assert scorer.linear is None and not scorer.inline(1)
    records = [r for r in telco_records if str(r["TotalCharges"]).strip()][:200]
    logits, contributions, codes = reference_score(telco, model, records, top_k=3)
    calls = []
    hook = model.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape))
    try:
        out = scorer.evaluate(records)
    finally:
        hook.remove()
    assert calls == [(len(records) * (len(telco.features) + 1), Encoder(telco).n_features)]
    np.testing.assert_allclose(out.logits, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.contributions, contributions, rtol=0, atol=1e-5)
    gaps = np.diff(np.sort(np.abs(contributions), axis=1)[:, ::-1][:, :4], axis=1)
    clear = (np.abs(gaps) > 1e-4).all(axis=1)  # rows without a near-tie in their top 3
    got = scorer.score(records, top_k=3)
    for i in np.flatnonzero(clear):
        assert [c.feature for c in got[i].reason_codes] == [c.feature for c in codes[i]]
    assert clear.mean() > 0.9


def test_batched_occlusion_on_any_encoding() -> None:
    contract = load_contract(CONTRACTS / "bank_propensity.yaml")
    encoder = Encoder(contract)
    torch.manual_seed(3)
    model = build_model("mlp", encoder.n_features).eval()
    x = np.random.default_rng(1).random((7, encoder.n_features)).astype(np.float32)
    base = neutral_baseline(encoder)
    a = occlusion(model, x, encoder, base)
    b = batched_occlusion(model, x, encoder, base)
    np.testing.assert_allclose(b[0], a[0], atol=1e-6)
    np.testing.assert_allclose(b[1], a[1], atol=1e-6)


def test_predictions_json_equals_scores(
    telco: Contract, telco_records: list[dict[str, Any]]
) -> None:
    scorer = Scorer(telco, _logreg(telco, 4))
    records = telco_records[:60]  # includes a blank TotalCharges: imputed or rejected per contract
    try:
        scores = scorer.score(records, top_k=3)
    except RecordsInvalid:
        records = [r for r in records if str(r["TotalCharges"]).strip()]
        scores = scorer.score(records, top_k=3)
    preds = scorer.predictions(records, top_k=3)
    assert len(preds) == len(scores)
    for p, s in zip(preds, scores, strict=True):
        assert p["probability"] == s.probability and p["warnings"] == s.warnings
        assert p["reason_codes"] == [
            {"feature": c.feature, "contribution": c.contribution, "direction": c.direction}
            for c in s.reason_codes
        ]
    assert scorer.predictions(records[:2], top_k=0)[0]["reason_codes"] == []
