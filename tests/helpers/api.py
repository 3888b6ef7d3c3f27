"""Factories for API tests: a toy contract, hand-set logistic-regression weights, a publisher,
a record, and the checks that a response echoes no submitted value."""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import httpx
import numpy as np

from common.contract import Contract, parse_contract
from common.encoding import Encoder
from common.model import weights_to_bytes
from privacy.audit import AuditSigner, load_public_key
from server.registry import Registry
from server.registry_signing import RowVerifier

CANARY = "CANARY-7f3a-do-not-echo"

# Encoded columns: tenure, monthly, plan=basic, plan=pro, plan=<other>, paperless.
W_V1 = [-4.0, 1.0, 0.5, -0.5, 0.0, 2.0]
B_V1 = 0.3
W_V2 = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
B_V2 = -1.0


def toy_contract() -> Contract:
    return parse_contract(
        {
            "name": "toy-churn",
            "version": 1,
            "task": "churn",
            "label": {"column": "churned", "positive": "Yes"},
            "id": "customer_id",
            "drop": ["email"],
            "features": [
                {"name": "tenure", "type": "numeric", "min": 0, "max": 100},
                {
                    "name": "monthly",
                    "type": "numeric",
                    "min": 0,
                    "max": 200,
                    "missing": "impute",
                    "impute": 50,
                },
                {"name": "plan", "type": "categorical", "vocabulary": ["basic", "pro"]},
                {"name": "paperless", "type": "binary"},
            ],
        }
    )


def logreg_weights(w: list[float], b: float) -> bytes:
    return weights_to_bytes(
        {"0.weight": np.array([w], np.float32), "0.bias": np.array([b], np.float32)}
    )


# The coordinator's publishing key of the tests: rows `publish` writes are signed with it, and
# `publisher_pub()` is the .pub an API under test pins (create_app(registry_public_keys=...)).
PUBLISHER = AuditSigner.generate()


@functools.cache
def publisher_pub() -> Path:
    path = Path(tempfile.mkdtemp(prefix="atoll-publisher-")) / "publishing.pub"
    path.write_text(PUBLISHER.public_key_pem, encoding="ascii")
    return path


def publisher_verifier() -> RowVerifier:
    """What a reader pins to verify rows `publish` signed."""
    return RowVerifier([load_public_key(PUBLISHER.public_key_pem)])


def publish(registry: Registry, name: str, kind: str, weights: bytes) -> None:
    if registry.signer is None:  # a registry the test opened itself: sign as the coordinator
        registry.signer = PUBLISHER
    contract = toy_contract()
    registry.publish(
        name=name,
        task="churn",
        contract=contract,
        model_kind=kind,
        n_features=Encoder(contract).n_features,
        weights=weights,
        metrics={"final": {"auc": 0.8}},
        participants=[{"name": "north", "node_id": 1, "train_examples": 90, "test_examples": 10}],
        privacy={"delta": 1e-5, "epsilon_per_node": {"north": float("inf")}, "mechanism": "none"},
        run={"run_id": "r1", "strategy": "fedavg", "rounds": 1, "config": {}},
    )


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


RECORD = {
    "tenure": 10,
    "monthly": 150,
    "plan": "pro",
    "paperless": "Yes",
    "customer_id": "c-1",
    "churned": "No",
    "email": "x@example.org",
}


def assert_no_canary(response: httpx.Response) -> None:
    assert CANARY not in response.text
    assert_no_input_key(response)


def assert_no_input_key(response: httpx.Response) -> None:
    """FastAPI's default 422 echoes the submitted value under `input`; ours must not."""
    detail = response.json().get("detail")
    if isinstance(detail, list):
        assert all("input" not in item and "ctx" not in item for item in detail)
