"""Registry rows prove themselves: each is signed by the coordinator's publishing key, and the API
and CLI verify against a public key pinned in their own settings before serving.

Tampering is done as an intruder with write access to the registry database would: swap a
model's weights and recompute the unkeyed `weights_sha256`, edit a card's numbers, re-sign with a
key of their own. Each is refused for that row only; the other models stay served.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.api import (
    PUBLISHER,
    RECORD,
    logreg_weights,
    publish,
    publisher_pub,
    publisher_verifier,
)
from pydantic import ValidationError
from typer.testing import CliRunner

from atoll.cli import app as atoll_cli
from common.contract import parse_contract
from privacy.audit import AuditSigner, load_public_key, query
from server.api.app import create_app
from server.api.auth import ApiKeyStore
from server.api.registry_trust import ROW_REFUSED
from server.coordinator_settings import (
    CoordinatorSettings,
    CoordinatorSettingsError,
    stage_contract,
)
from server.registry import Registry, RegistryError, RowRefused
from server.registry_signing import RegistryKeyError, RowVerifier, row_message

pytestmark = pytest.mark.hardening
CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _registry(tmp: Path) -> str:
    url = f"sqlite:///{tmp / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "churn", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
        publish(registry, "upsell", "logreg", logreg_weights([0.0, 1.0, 0, 0, 0, 0], 0.5))
    return url


def _sql(url: str, statement: str, *params: Any) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute(statement, params)


def _swap_weights(url: str, name: str, weights: bytes) -> None:
    """What an intruder does: new weights, and the unkeyed hash recomputed to match."""
    _sql(
        url,
        "UPDATE model_versions SET weights = ?, weights_sha256 = ? WHERE name = ?",
        weights,
        hashlib.sha256(weights).hexdigest(),
        name,
    )


@pytest.fixture
def served(tmp_path: Path) -> dict[str, Any]:
    url = _registry(tmp_path)
    with ApiKeyStore.open(url) as store:
        keys = {role: store.create(f"t-{role}", role)[1] for role in ("app", "analyst")}
    return {"url": url, "keys": keys}


def test_a_row_with_swapped_weights_and_recomputed_sha256_is_refused_the_others_served(
    served: dict[str, Any],
) -> None:
    url, keys = served["url"], served["keys"]
    # the intruder swaps the weights of "churn" v1 and recomputes their sha256
    _swap_weights(url, "churn", logreg_weights([-9.0, 0, 0, 0, 0, 0], 9.0))
    with Registry(url) as unverified:  # what a reader without the pinned key would serve
        assert unverified.get("churn").card.weights_sha256  # the unkeyed hash still "checks"
    app = create_app(url, registry_public_keys=[publisher_pub()], rate_per_second=1000)
    with TestClient(app) as client:
        for path in ("/models/churn/predict", "/models/churn/versions/1/predict"):
            r = client.post(path, json={"records": [RECORD]}, headers=_bearer(keys["app"]))
            assert r.status_code == 409, r.text
            detail = r.json()["detail"]
            assert "model 'churn' v1 is refused" in detail and "altered" in detail
        card = client.get("/models/churn/versions/1", headers=_bearer(keys["analyst"]))
        assert card.status_code == 409 and "model 'churn' v1" in card.json()["detail"]

        # the other model is served as before, card and scores
        ok = client.post(
            "/models/upsell/predict", json={"records": [RECORD]}, headers=_bearer(keys["app"])
        )
        assert ok.status_code == 200, ok.text
        assert client.get("/models/upsell", headers=_bearer(keys["analyst"])).status_code == 200
        assert client.get("/health").status_code == 200
    refused = query(url, "api", action=ROW_REFUSED, limit=None)
    assert len(refused) == 3
    assert {e.subject for e in refused} == {"model:churn/v1"}
    assert all(e.details["reason"].startswith("the row does not match") for e in refused)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("metrics", '{"final": {"auc": 0.99}}'),  # a better-looking card
        ("participants", "[]"),
        ("contract_json", None),  # the contract, hash kept
        ("signature", None),  # signature removed
        ("signature", "00" * 64),  # garbage signature
    ],
)
def test_any_edit_of_card_contract_or_signature_is_refused(
    tmp_path: Path, column: str, value: str | None
) -> None:
    url = _registry(tmp_path)
    if column == "contract_json":
        with Registry(url) as registry:
            text = registry.get("churn").contract.canonical_json()
        value = text.replace('"max":100', '"max":1000')
        assert value != text
    _sql(url, f"UPDATE model_versions SET {column} = ? WHERE name = 'churn'", value)  # noqa: S608
    with Registry(url, verifier=publisher_verifier()) as registry:
        with pytest.raises(RowRefused, match="model 'churn' v1 is refused"):
            registry.card("churn")
        with pytest.raises(RowRefused):
            registry.get("churn", 1)
        assert registry.get("upsell").card.name == "upsell"


def test_a_row_re_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    url = _registry(tmp_path)
    intruder = AuditSigner.generate()
    weights = logreg_weights([-9.0, 0, 0, 0, 0, 0], 9.0)
    _swap_weights(url, "churn", weights)
    with Registry(url) as unverified:  # the intruder's own view: card as it now reads
        card = unverified.card("churn").model_dump(mode="json")
        contract = unverified.get("churn").contract.canonical_json()
    forged = intruder.sign(row_message(card, contract)).hex()
    _sql(url, "UPDATE model_versions SET signature = ? WHERE name = 'churn'", forged)
    with (
        Registry(url, verifier=publisher_verifier()) as registry,
        pytest.raises(RowRefused, match="not match its publisher signature"),
    ):
        registry.get("churn")
    # ... and an API pinned with the wrong key serves nothing
    wrong = tmp_path / "wrong.pub"
    wrong.write_text(AuditSigner.generate().public_key_pem)
    with Registry(url, verifier=RowVerifier.from_files([wrong])) as registry:
        for name in ("churn", "upsell"):
            with pytest.raises(RowRefused):
                registry.card(name)


def test_wrong_pinned_key_refuses_every_model_over_http(served: dict[str, Any]) -> None:
    wrong = Path(served["url"].removeprefix("sqlite:///")).parent / "wrong.pub"
    wrong.write_text(AuditSigner.generate().public_key_pem)
    with TestClient(create_app(served["url"], registry_public_keys=[wrong])) as client:
        for name in ("churn", "upsell"):
            r = client.post(
                f"/models/{name}/predict",
                json={"records": [RECORD]},
                headers=_bearer(served["keys"]["app"]),
            )
            assert r.status_code == 409 and f"model '{name}' v1 is refused" in r.json()["detail"]


def test_missing_pinned_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    url = _registry(tmp_path)
    with pytest.raises(RegistryKeyError, match="no registry public key is pinned"):
        create_app(url)
    with pytest.raises(RegistryKeyError, match="registry public key: cannot read public key"):
        create_app(url, registry_public_keys=[tmp_path / "absent.pub"])
    result = CliRunner().invoke(atoll_cli, ["serve", "--registry", url])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "no registry public key is pinned" in said and "--registry-public-key" in said
    assert "Traceback" not in result.output


def test_publishing_needs_the_key_and_signatures_survive_postgres_json(
    postgres_url: str,
) -> None:
    """JSONB normalises numbers (1e20 comes back an int, key order changes): still verifies."""
    contract = parse_contract(
        {
            "name": "pg",
            "version": 1,
            "task": "churn",
            "label": {"column": "y", "positive": "1"},
            "id": "id",
            "features": [{"name": "x", "type": "numeric", "min": 0, "max": 1}],
        }
    )
    args: dict[str, Any] = {
        "name": "pg-model",
        "task": "churn",
        "contract": contract,
        "model_kind": "logreg",
        "n_features": 1,
        "weights": logreg_weights([0.5], 0.1),
        "metrics": {"z": {"b": 1e20, "a": 5.0, "c": [0.1, 2.5e-7, float("inf")]}},
        "participants": [{"name": "n", "node_id": 2**63 + 1}],
        "privacy": {"delta": 1e-5, "epsilon_per_node": {"n": 1.25}},
        "run": {"run_id": "1", "config": {"k": True}},
    }
    with (
        Registry(postgres_url) as registry,
        pytest.raises(RegistryError, match="without the coordinator's publishing key"),
    ):
        registry.publish(**args)
    with Registry(postgres_url, signer=PUBLISHER, verifier=publisher_verifier()) as registry:
        card = registry.publish(**args)
    with Registry(postgres_url, verifier=publisher_verifier()) as registry:
        assert registry.card("pg-model").weights_sha256 == card.weights_sha256
        assert registry.get("pg-model").weights == args["weights"]


def test_publishing_key_is_pinnable_and_the_verifier_takes_several(tmp_path: Path) -> None:
    rotated = AuditSigner.generate()
    verifier = RowVerifier(
        [load_public_key(rotated.public_key_pem), load_public_key(PUBLISHER.public_key_pem)]
    )
    url = _registry(tmp_path)
    with Registry(url, verifier=verifier) as registry:
        assert registry.card("churn").version == 1


# ---- coordinator settings: no coordinator path in a run config --------------------------------


def test_the_contract_is_resolved_on_the_coordinator_by_hash(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    digest = stage_contract(CONTRACTS / "telco_churn.yaml", contracts)
    settings = CoordinatorSettings(
        registry_url="sqlite://",
        audit_key=tmp_path / "keys" / "a.pem",
        publishing_key=tmp_path / "p.pem",
        contracts_dir=contracts,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    assert settings.contract(digest).hash == digest
    with pytest.raises(CoordinatorSettingsError, match="not in the coordinator's contracts"):
        settings.contract("0" * 64)
    (contracts / f"{digest}.json").write_text(
        (contracts / f"{digest}.json").read_text().replace('"churn"', '"propensity"', 1)
    )
    with pytest.raises(CoordinatorSettingsError, match="does not match its hash"):
        settings.contract(digest)


def test_coordinator_settings_need_the_publishing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text('registry-url = "sqlite://"\naudit-key = "/a.pem"\ncontracts-dir = "/c"\n')
    monkeypatch.setenv("ATOLL_COORDINATOR_CONFIG", str(path))
    with pytest.raises(CoordinatorSettingsError, match="publishing-key: Field required"):
        CoordinatorSettings.load()


def test_the_coordinator_checkpoints_away_from_its_audit_key(tmp_path: Path) -> None:
    """Checkpoints beside the key they are signed with prove nothing to whoever holds the key."""
    common = {
        "registry_url": "sqlite://",
        "audit_key": tmp_path / "audit" / "coordinator.pem",
        "publishing_key": tmp_path / "p.pem",
        "contracts_dir": tmp_path / "contracts",
    }
    with pytest.raises(ValidationError, match="checkpoint-dir .* is beside the audit key"):
        CoordinatorSettings(**common, checkpoint_dir=tmp_path / "audit" / "checkpoints")
    ok = CoordinatorSettings(**common, checkpoint_dir=tmp_path / "share" / "coordinator")
    assert ok.checkpoint_dir.name == "coordinator"
