"""Model registry on SQLite and PostgreSQL: versioning, cards, integrity, migrations.

The PostgreSQL variant needs the server CI starts (ATOLL_TEST_PG_URL, default in conftest.py). If
it is unreachable the tests FAIL on purpose: a silently skipped database test proves nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers.api import PUBLISHER, publisher_verifier

from common.contract import Contract, parse_contract
from common.db import default_registry_url
from common.encoding import Encoder
from common.model import build_model, load_model, weights_to_bytes
from server import analytics, auth_models, node_names  # noqa: F401 - their tables join Base
from server.registry import ModelNotFound, Registry, RegistryError
from server.registry_cards import ModelCard
from server.registry_models import Base


def small_contract() -> Contract:
    return parse_contract(
        {
            "name": "toy-churn",
            "version": 1,
            "task": "churn",
            "label": {"column": "churned", "positive": "Yes"},
            "id": "customer_id",
            "features": [
                {"name": "tenure", "type": "numeric", "min": 0, "max": 72},
                {"name": "plan", "type": "categorical", "vocabulary": ["basic", "pro"]},
                {"name": "paperless", "type": "binary"},
            ],
        }
    )


def weights_for(contract: Contract, seed: int, kind: str = "logreg") -> bytes:
    torch.manual_seed(seed)
    return weights_to_bytes(build_model(kind, Encoder(contract).n_features).state_dict())


def publish(registry: Registry, name: str = "churn-model", seed: int = 0, **overrides) -> ModelCard:
    registry.signer = registry.signer or PUBLISHER  # the coordinator's publishing key
    contract = small_contract()
    args = {
        "name": name,
        "task": "churn",
        "contract": contract,
        "model_kind": "logreg",
        "n_features": Encoder(contract).n_features,
        "weights": weights_for(contract, seed),
        "metrics": {"rounds": [{"round": 1, "auc": 0.61}], "final": {"auc": 0.7}},
        "participants": [
            {"name": "north", "node_id": 2**63 + 5, "train_examples": 800, "test_examples": 200},
            {"name": "south", "node_id": 17, "train_examples": 600, "test_examples": 150},
        ],
        "privacy": {
            "delta": 1e-5,
            "epsilon_per_node": {"north": 2.5, "south": float("inf")},
            "mechanism": "dp-sgd",
            "noise_multiplier": 1.1,
        },
        "run": {"run_id": f"run-{seed}", "strategy": "fedavg", "rounds": 3, "config": {"lr": 0.5}},
    }
    args.update(overrides)
    return registry.publish(**args)


# ---- backends ----------------------------------------------------------------------------------


def _sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield default_registry_url(tmp_path / "nested" / "home")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield from _sqlite_url(tmp_path)
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    with Registry(registry_url, signer=PUBLISHER, verifier=publisher_verifier()) as reg:
        yield reg


# ---- tests -------------------------------------------------------------------------------------


def test_versions_increment_and_latest(registry: Registry) -> None:
    first = publish(registry, seed=1)
    second = publish(registry, seed=2)
    other = publish(registry, name="propensity-x", seed=3)
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert registry.get("churn-model").card.version == 2
    assert registry.get("churn-model", 1).card.run["run_id"] == "run-1"
    assert registry.latest_version("churn-model") == 2
    assert registry.count_models() == 2
    summaries = {s.name: s for s in registry.list_models()}
    assert summaries["churn-model"].versions == [1, 2]
    assert summaries["churn-model"].latest_version == 2
    assert summaries["propensity-x"].task == "churn"
    assert [c.version for c in registry.versions("churn-model")] == [1, 2]


def test_model_not_found(registry: Registry) -> None:
    with pytest.raises(ModelNotFound, match="no model named 'ghost'"):
        registry.get("ghost")
    publish(registry)
    with pytest.raises(ModelNotFound, match="has no version 7"):
        registry.get("churn-model", 7)
    with pytest.raises(ModelNotFound):
        registry.card("ghost")
    with pytest.raises(ModelNotFound):
        registry.latest_version("ghost")


def test_card_has_everything_but_weights(registry: Registry) -> None:
    card = publish(registry)
    dumped = json.loads(card.model_dump_json())
    assert "weights" not in dumped
    assert dumped["contract_hash"] == small_contract().hash
    assert dumped["contract_name"] == "toy-churn"
    assert dumped["privacy"]["epsilon_per_node"] == {"north": 2.5, "south": "Infinity"}
    assert dumped["participants"][0]["node_id"] == 2**63 + 5
    assert dumped["metrics"]["final"]["auc"] == 0.7
    assert card.created_at.tzinfo is not None and card.created_at.utcoffset().total_seconds() == 0
    stored = registry.card("churn-model", 1)
    assert stored == card
    assert stored.created_at.tzinfo == UTC


def test_weights_and_contract_round_trip(registry: Registry) -> None:
    contract = small_contract()
    blob = weights_for(contract, seed=4)
    card = publish(registry, weights=blob)
    stored = registry.get("churn-model")
    assert stored.weights == blob
    assert stored.contract == contract and stored.contract.hash == card.contract_hash
    model = load_model("logreg", card.n_features, stored.weights)
    expected = load_model("logreg", card.n_features, blob)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected.state_dict()[key])


def test_publish_rejects_unservable_models(registry: Registry) -> None:
    contract = small_contract()
    with pytest.raises(RegistryError, match="encodes to 5 columns"):
        publish(registry, n_features=4)
    with pytest.raises(RegistryError, match="do not load as a logreg model"):
        publish(registry, weights=b"not an npz")
    with pytest.raises(RegistryError, match="do not load as a mlp model"):
        publish(registry, model_kind="mlp")
    nan = build_model("logreg", 5).state_dict()
    nan["0.weight"][0, 0] = float("nan")
    with pytest.raises(RegistryError, match="NaN or infinite"):
        publish(registry, weights=weights_to_bytes(nan))
    with pytest.raises(RegistryError, match="differs from the task"):
        publish(registry, task="propensity")
    with pytest.raises(RegistryError, match="model name"):
        publish(registry, name="../etc")
    with pytest.raises(RegistryError, match="participants.0.train_examples"):
        publish(registry, participants=[{"name": "a", "train_examples": -1}])
    assert registry.list_models() == []
    assert contract.hash  # the contract itself was fine throughout


def test_concurrent_publishes_get_distinct_versions(registry_url: str) -> None:
    registries = [Registry(registry_url) for _ in range(4)]
    versions: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(registries))

    def worker(reg: Registry, seed: int) -> None:
        try:
            start.wait()
            versions.append(publish(reg, seed=seed).version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r, i)) for i, r in enumerate(registries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for reg in registries:
        reg.close()
    assert errors == []
    assert sorted(versions) == [1, 2, 3, 4]


def test_publish_retries_when_its_version_is_taken(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a concurrent publisher: the first `stale` reads of max(version) are one behind."""
    publish(registry, seed=1)
    original = Registry._write
    stale = {"left": 1}

    @contextmanager
    def racing_write(self: Registry):
        with original(self) as session:
            real = session.scalar
            if stale["left"] > 0:
                stale["left"] -= 1
                session.scalar = lambda stmt: (real(stmt) or 1) - 1  # type: ignore[method-assign]
            yield session

    monkeypatch.setattr(Registry, "_write", racing_write)
    assert publish(registry, seed=2).version == 2 and stale["left"] == 0
    stale["left"] = 99
    with pytest.raises(RegistryError, match="could not assign a version.*retry the publish"):
        publish(registry, seed=3)
    assert registry.latest_version("churn-model") == 2


def test_reopen_is_idempotent(registry_url: str) -> None:
    with Registry(registry_url) as reg:
        publish(reg)
    with Registry(registry_url) as reg:  # migrations already at head: nothing to do, data kept
        assert reg.latest_version("churn-model") == 1


def test_migrations_match_orm_models(registry: Registry) -> None:
    with registry.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    url = default_registry_url(tmp_path / "a" / "b")
    with Registry(url) as reg:
        assert reg.count_models() == 0
    assert (tmp_path / "a" / "b" / "registry.db").is_file()


def test_unreachable_database_says_what_to_do() -> None:
    with pytest.raises(RegistryError, match="cannot open the model registry.*check that"):
        Registry("postgresql+psycopg://postgres:secret@127.0.0.1:1/none?connect_timeout=2")
