"""Scoring API over a registry holding hand-set logistic-regression weights.

With known weights the expected probability and reason codes can be computed by hand: for logistic
regression, a feature's occlusion contribution is weight x (encoded value - neutral baseline).
Requests carry real API keys: an `app` key on predict routes, an `analyst` key elsewhere (roles and
limits are tested in test_api_auth.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers.api import (
    B_V1,
    B_V2,
    CANARY,
    RECORD,
    W_V1,
    W_V2,
    assert_no_canary,
    assert_no_input_key,
    logreg_weights,
    publish,
    publisher_pub,
    sigmoid,
    toy_contract,
)

from common.encoding import Encoder
from common.model import build_model, weights_to_bytes
from server.api.app import create_app
from server.api.auth import ApiKeyStore
from server.api.explain import neutral_baseline, occlusion
from server.registry import Registry


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights(W_V1, B_V1))
        publish(registry, "toy", "logreg", logreg_weights(W_V2, B_V2))
        torch.manual_seed(0)
        mlp = build_model("mlp", Encoder(toy_contract()).n_features)
        publish(registry, "toy-mlp", "mlp", weights_to_bytes(mlp.state_dict()))
    with ApiKeyStore.open(url) as keys:
        app_key, analyst_key = keys.create("test-app", "app")[1], keys.create("test", "analyst")[1]
    app = create_app(
        url,
        registry_public_keys=[publisher_pub()],
        max_records=5,
        rate_per_second=1000,
        rate_burst=1000,
    )
    with TestClient(app) as c:
        c.auth = KeyPerCaller(app_key, analyst_key)
        yield c


class KeyPerCaller(httpx.Auth):
    """Two callers on one client: the scoring app on predict routes, an analyst elsewhere."""

    def __init__(self, app_key: str, analyst_key: str) -> None:
        self.app_key, self.analyst_key = app_key, analyst_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self.app_key if request.url.path.endswith("/predict") else self.analyst_key
        request.headers["Authorization"] = f"Bearer {key}"
        yield request


# ---- metadata ----------------------------------------------------------------------------------


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}  # alive; nothing else, no query
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Atoll scoring API"
    assert "/models/{name}/versions/{version}/predict" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_model_listing_and_cards(client: TestClient) -> None:
    listing = {m["name"]: m for m in client.get("/models").json()}
    assert listing["toy"]["versions"] == [1, 2] and listing["toy"]["latest_version"] == 2
    versions = client.get("/models/toy").json()
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    card = client.get("/models/toy/versions/latest").json()
    assert card["version"] == 2 and card["contract_hash"] == toy_contract().hash
    assert card["privacy"]["epsilon_per_node"] == {"north": "Infinity"}
    assert "weights" not in card and len(card["weights_sha256"]) == 64
    assert client.get("/models/toy/versions/1").json()["version"] == 1


def test_not_found_and_bad_version(client: TestClient) -> None:
    for path in ("/models/ghost", "/models/toy/versions/9", "/models/ghost/versions/latest"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "GET /models" in r.json()["detail"]
    r = client.post("/models/ghost/predict", json={"records": [RECORD]})
    assert r.status_code == 404
    r = client.get(f"/models/toy/versions/{CANARY}")
    assert r.status_code == 422 and "positive integer or 'latest'" in r.json()["detail"]
    assert_no_canary(r)


# ---- scoring -----------------------------------------------------------------------------------


def test_single_predict_probability_and_reason_codes(client: TestClient) -> None:
    r = client.post("/models/toy/versions/1/predict", json={"records": [RECORD], "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("toy", 1)
    assert body["contract_hash"] == toy_contract().hash
    [pred] = body["predictions"]
    x = [10 / 100, 150 / 200, 0, 1, 0, 1]
    logit = sum(w * v for w, v in zip(W_V1, x, strict=True)) + B_V1
    assert pred["probability"] == pytest.approx(sigmoid(logit), abs=1e-6)
    # weight x (value - baseline): tenure -4*(0.1-0.5)=1.6, paperless 2*(1-0.5)=1.0,
    # monthly 1*(0.75-0.25)=0.5, plan -0.5*1=-0.5 (tie with monthly: contract order wins).
    codes = pred["reason_codes"]
    assert [c["feature"] for c in codes] == ["tenure", "paperless", "monthly"]
    assert [c["contribution"] for c in codes] == pytest.approx([1.6, 1.0, 0.5], abs=1e-5)
    assert {c["direction"] for c in codes} == {"increases"}
    assert pred["warnings"] == []


def test_batch_predict_latest_with_warnings(client: TestClient) -> None:
    records = [
        RECORD,
        {"tenure": 90, "plan": CANARY, "paperless": False},  # monthly imputed, plan unknown
        {"tenure": 250, "monthly": 10, "plan": "basic", "paperless": "no"},  # tenure clipped
    ]
    r = client.post("/models/toy/versions/1/predict", json={"records": records, "top_k": 1})
    assert r.status_code == 200, r.text
    assert_no_canary(r)
    preds = r.json()["predictions"]
    assert len(preds) == 3
    assert preds[1]["reason_codes"] == [
        {
            "feature": "tenure",
            "contribution": pytest.approx(-1.6, abs=1e-5),
            "direction": "decreases",
        }
    ]
    assert preds[1]["warnings"] == [
        "field monthly: missing, imputed with the contract value",
        "field plan: unknown category mapped to other",
    ]
    assert preds[2]["warnings"] == ["field tenure: outside the contract range, clipped"]
    x2 = [0.9, 0.25, 0, 0, 1, 0]
    logit2 = sum(w * v for w, v in zip(W_V1, x2, strict=True)) + B_V1
    assert preds[1]["probability"] == pytest.approx(sigmoid(logit2), abs=1e-6)

    latest = client.post("/models/toy/predict", json={"records": records}).json()
    assert latest["version"] == 2
    assert latest["predictions"][0]["probability"] == pytest.approx(sigmoid(0.1 + B_V2), abs=1e-6)
    assert latest["predictions"][0]["reason_codes"][0]["feature"] == "tenure"


def test_mlp_reason_codes_match_manual_occlusion(client: TestClient) -> None:
    records = [RECORD, {"tenure": 3, "monthly": 20, "plan": "basic", "paperless": "No"}]
    r = client.post("/models/toy-mlp/predict", json={"records": records, "top_k": 4})
    assert r.status_code == 200, r.text
    encoder = Encoder(toy_contract())
    torch.manual_seed(0)
    mlp = build_model("mlp", encoder.n_features)
    frame_x = np.array([[0.1, 0.75, 0, 1, 0, 1], [0.03, 0.1, 1, 0, 0, 0]], np.float32)
    logits, contrib = occlusion(mlp, frame_x, encoder, neutral_baseline(encoder))
    for pred, z, row in zip(r.json()["predictions"], logits, contrib, strict=True):
        assert pred["probability"] == pytest.approx(sigmoid(float(z)), abs=1e-6)
        got = {c["feature"]: c["contribution"] for c in pred["reason_codes"]}
        assert got == pytest.approx(
            dict(zip(encoder.contract.feature_names, row, strict=True)), abs=1e-5
        )


def test_model_is_loaded_once_per_version(client: TestClient) -> None:
    cache = client.app.state.model_cache
    client.post("/models/toy/versions/2/predict", json={"records": [RECORD]})
    before = cache.loads
    for _ in range(3):
        assert client.post("/models/toy/predict", json={"records": [RECORD]}).status_code == 200
    assert cache.loads == before


# ---- rejections (never echo the value) ---------------------------------------------------------


def problems(response) -> list[tuple[int, str, str]]:
    assert response.status_code == 422, response.text
    assert_no_canary(response)
    return [(p["record"], p["field"], p["problem"]) for p in response.json()["detail"]]


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (
            {"favourite_colour": CANARY},
            "favourite_colour",
            "unknown field 'favourite_colour' — not in contract toy-churn",
        ),
        ({"tenure": CANARY}, "tenure", "expected a number, got a string"),
        ({"tenure": True}, "tenure", "expected a number, got a boolean"),
        ({"tenure": None}, "tenure", "required field is missing"),
        ({"tenure": 10**400}, "tenure", "number is not finite"),
        ({"paperless": CANARY}, "paperless", "not one of the contract's true/false values"),
        ({"plan": [CANARY]}, "plan", "expected a string, got an array"),
    ],
)
def test_invalid_field_is_422_without_value(
    client: TestClient, change: dict, field: str, fragment: str
) -> None:
    bad = {**RECORD, **change}
    r = client.post("/models/toy/predict", json={"records": [RECORD, bad]})
    found = problems(r)
    assert len(found) == 1
    record, name, problem = found[0]
    assert (record, name) == (1, field) and fragment in problem


def test_missing_required_field_is_422(client: TestClient) -> None:
    record = {k: v for k, v in RECORD.items() if k != "paperless"}
    assert problems(client.post("/models/toy/predict", json={"records": [record]})) == [
        (0, "paperless", "required field is missing (the contract does not impute it)")
    ]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422(client: TestClient, literal: str) -> None:
    body = json.dumps({"records": [{**RECORD, "tenure": 1.5}]}).replace("1.5", literal)
    r = client.post(
        "/models/toy/predict", content=body, headers={"content-type": "application/json"}
    )
    [(record, field, problem)] = problems(r)
    assert (record, field) == (0, "tenure") and "not finite" in problem


def test_too_many_records(client: TestClient) -> None:
    r = client.post("/models/toy/predict", json={"records": [RECORD] * 6})
    assert r.status_code == 413
    assert r.json()["detail"].startswith("6 records in one request but the limit is 5")


@pytest.mark.parametrize(
    "body",
    [
        {"records": [CANARY]},
        {"records": [RECORD], "top_k": CANARY},
        {"records": [RECORD], CANARY: CANARY + "x"},
        {"records": []},
        {"records": CANARY},
    ],
)
def test_body_validation_errors_drop_input(client: TestClient, body: dict) -> None:
    r = client.post("/models/toy/predict", json=body)
    assert r.status_code == 422
    assert_no_input_key(r)
    assert CANARY + "x" not in r.text
    if CANARY not in body:
        assert_no_canary(r)


def test_rejections_do_not_log_values(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post("/models/toy/predict", json={"records": [{**RECORD, "tenure": CANARY}]})
        client.post("/models/toy/predict", json={"records": [{**RECORD, "plan": CANARY}]})
    assert CANARY not in caplog.text
    assert "rejected 1 records" in caplog.text
