"""The model registry: every aggregated model the coordinator publishes, versioned per name.

A published version is immutable and self-describing: weights (.npz), the exact data contract they
were trained under (canonical JSON + hash), per-round metrics, who took part and what privacy each
participant spent. Opening a registry migrates its database to the latest schema, so a fresh
SQLite file or PostgreSQL database needs no separate setup step.

Each row is signed by the coordinator's publishing key (`server.registry_signing`): a registry
opened with a `verifier` (the API, the CLI) refuses a row whose signature does not verify with
`RowRefused`, naming the model and version — and serves every other row as before.

What the registry hands out (`ModelCard`, `ModelSummary`, `StoredModel`) is `server.registry_cards`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, undefer

from common.contract import Contract, ContractError, contract_from_json
from common.db import SQLITE_BEGIN_OPTION, make_engine, make_session_factory, migrate, safe_url
from common.encoding import Encoder
from common.errors import AtollError
from common.model import MODEL_KINDS, load_for
from privacy.audit import AuditSigner
from server.registry_cards import (
    PARTICIPANTS,
    ModelCard,
    ModelSummary,
    PrivacyInfo,
    StoredModel,
    card_from_row,
    json_safe,
)
from server.registry_models import ModelVersion, utcnow
from server.registry_signing import RowVerifier, sign_row

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_PUBLISH_ATTEMPTS = 3  # a concurrent publisher can take our version number; then we recount


class RegistryError(AtollError, RuntimeError):
    """The registry cannot be opened or a publish/read failed; the message says what to do."""


class RowRefused(RegistryError):
    """A row fails its publisher signature: it was altered after publishing; it is not served."""

    def __init__(self, name: str, version: int, why: str) -> None:
        self.name = name
        self.version = version
        self.why = why
        super().__init__(
            f"model '{name}' v{version} is refused: {why} — the registry row was altered after "
            "it was published (or signed by a key that is not pinned); it is not served. "
            "Restore the row from a backup or republish the model; check --registry-public-key"
        )


class ModelNotFound(AtollError, LookupError):
    """No model (or no such version of it) is published."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        shown = name if len(name) <= 100 else name[:100] + "..."
        if version is None:
            msg = f"no model named '{shown}' in the registry; GET /models lists published models"
        else:
            msg = (
                f"model '{shown}' has no version {version}; GET /models/{shown} lists its versions"
            )
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


def _is_unique_violation(exc: IntegrityError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)


def _error_locations(err: ValidationError, root: str) -> str:
    """Where and why, without the offending values."""
    return "; ".join(
        f"{'.'.join([root, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in err.errors()
    )


def _check_weights(model_kind: str, contract: Contract, weights: bytes) -> None:
    """Refuse weights the API could not load or that would score NaN."""
    n_features = Encoder(contract).n_features
    try:
        model = load_for(model_kind, contract, weights)
    except (ValueError, RuntimeError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise RegistryError(
            f"weights do not load as a {model_kind} model with {n_features} inputs "
            f"({type(exc).__name__}); publish weights_to_bytes(build_model(...).state_dict())"
        ) from None
    if not all(bool(torch.isfinite(p).all()) for p in model.state_dict().values()):
        raise RegistryError(
            "weights contain NaN or infinite values (training diverged); "
            "lower the learning rate or clipping norm and retrain"
        )


# ---- the registry ------------------------------------------------------------------------------


class Registry:
    """Versioned model store over SQLite or PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        signer: AuditSigner | None = None,
        verifier: RowVerifier | None = None,
    ) -> None:
        """`signer`: the publishing key (needed to publish); `verifier`: the pinned public keys
        every card and model read is checked against (without one, reads are unverified: give
        one wherever a model is served or shown)."""
        self.url = safe_url(url)
        self.signer = signer
        self.verifier = verifier
        self.engine: Engine = make_engine(url)
        self._sessions = make_session_factory(self.engine)
        if migrate:
            try:
                self._migrate()
            except OperationalError as exc:
                self.engine.dispose()
                raise RegistryError(
                    f"cannot open the model registry at {self.url}: "
                    f"{str(exc.orig).strip().splitlines()[0]}; "
                    "check that the database server is running and the URL is right"
                ) from None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def _migrate(self) -> None:
        """Bring the schema to the newest Alembic revision, one process at a time."""
        migrate(self.engine, MIGRATIONS_DIR)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._sessions() as session, session.begin():
            session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            yield session

    # -- writing --

    def publish(
        self,
        *,
        name: str,
        task: str,
        contract: Contract,
        model_kind: str,
        n_features: int,
        weights: bytes,
        metrics: dict[str, Any],
        participants: list[dict[str, Any]],
        privacy: dict[str, Any],
        run: dict[str, Any],
    ) -> ModelCard:
        """Store a new version of `name` (previous highest + 1), signed, and return its card."""
        if self.signer is None:
            raise RegistryError(
                "this registry was opened without the coordinator's publishing key, so it cannot "
                "publish: set publishing-key in the coordinator settings (Registry(signer=...))"
            )
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            raise RegistryError(
                "model name must be 1-100 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if task != contract.task:
            raise RegistryError(
                f"task '{task}' differs from the task '{contract.task}' of contract "
                f"'{contract.name}'; publish with task=contract.task"
            )
        if model_kind not in MODEL_KINDS:
            raise RegistryError(
                f"unknown model kind '{model_kind}': use one of {', '.join(MODEL_KINDS)}"
            )
        expected = Encoder(contract).n_features
        if n_features != expected:
            raise RegistryError(
                f"n_features={n_features} but contract '{contract.name}' encodes to {expected} "
                "columns; train and publish with Encoder(contract).n_features"
            )
        _check_weights(model_kind, contract, weights)
        try:
            checked = PARTICIPANTS.validate_python(participants)
            people = [p.model_dump(mode="json") for p in checked]
        except ValidationError as err:
            where = _error_locations(err, "participants")
            raise RegistryError(f"invalid participants: {where}") from None
        try:
            spent = PrivacyInfo.model_validate(json_safe(privacy))
        except ValidationError as err:
            where = _error_locations(err, "privacy")
            raise RegistryError(f"invalid privacy record: {where}") from None
        values: dict[str, Any] = {
            "name": name,
            "task": task,
            "contract_hash": contract.hash,
            "contract_json": contract.canonical_json(),
            "model_kind": model_kind,
            "n_features": n_features,
            "weights": weights,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "metrics": json_safe(metrics),
            "participants": json_safe(people),
            "privacy": json_safe(spent.model_dump(mode="python")),
            "run": json_safe(run),
        }
        for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
            try:
                with self._write() as session:
                    if self.engine.dialect.name == "postgresql":
                        # Serialise publishers of one name; the unique constraint stays the guard.
                        session.execute(
                            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                            {"key": f"atoll.model:{name}"},
                        )
                    latest = session.scalar(
                        select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
                    )
                    row = ModelVersion(version=(latest or 0) + 1, created_at=utcnow(), **values)
                    row.signature = sign_row(
                        self.signer, card_from_row(row).model_dump(mode="json"), row.contract_json
                    )
                    session.add(row)
                card = card_from_row(row)
                log.info("published model %s v%d (%d participants)", name, row.version, len(people))
                return card
            except IntegrityError as exc:
                if not _is_unique_violation(exc):
                    raise RegistryError(
                        f"publishing model '{name}' violated a database constraint: "
                        f"{type(exc.orig).__name__}; check the registry schema is migrated"
                    ) from None
                if attempt == _PUBLISH_ATTEMPTS:
                    raise RegistryError(
                        f"could not assign a version to model '{name}': {attempt} concurrent "
                        "publishes took the next number; retry the publish"
                    ) from None
                log.info("version of %s taken by a concurrent publish; recounting", name)
        raise AssertionError("unreachable")

    # -- reading --

    def list_models(self) -> list[ModelSummary]:
        """Every model name with its versions, newest task/timestamps from the latest version."""
        stmt = select(
            ModelVersion.name, ModelVersion.version, ModelVersion.task, ModelVersion.created_at
        ).order_by(ModelVersion.name, ModelVersion.version)
        with self._sessions() as session:
            rows = session.execute(stmt).all()
        summaries: dict[str, ModelSummary] = {}
        for name, version, task, created_at in rows:
            s = summaries.get(name)
            if s is None:
                s = summaries[name] = ModelSummary(
                    name=name,
                    task=task,
                    latest_version=version,
                    versions=[],
                    latest_created_at=created_at,
                )
            s.versions.append(version)
            s.latest_version, s.task, s.latest_created_at = version, task, created_at
        return list(summaries.values())

    def count_models(self) -> int:
        """Number of distinct model names."""
        with self._sessions() as session:
            return int(session.scalar(select(func.count(func.distinct(ModelVersion.name)))) or 0)

    def latest_version(self, name: str) -> int:
        """Highest published version of `name`; ModelNotFound if none."""
        with self._sessions() as session:
            latest = session.scalar(
                select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
            )
        if latest is None:
            raise ModelNotFound(name)
        return int(latest)

    def versions(self, name: str) -> list[ModelCard]:
        """Cards of every version of `name`, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)
            ).all()
        if not rows:
            raise ModelNotFound(name)
        return [self._verified(r) for r in rows]

    def _row(self, session: Session, name: str, version: int | None, weights: bool) -> ModelVersion:
        stmt = select(ModelVersion).where(ModelVersion.name == name)
        stmt = (
            stmt.order_by(ModelVersion.version.desc()).limit(1)
            if version is None
            else (stmt.where(ModelVersion.version == version))
        )
        if weights:
            stmt = stmt.options(undefer(ModelVersion.weights))
        row = session.scalars(stmt).first()
        if row is not None:
            return row
        if version is not None and session.scalar(
            select(func.count()).where(ModelVersion.name == name)
        ):
            raise ModelNotFound(name, version)
        raise ModelNotFound(name)

    def _verified(self, row: ModelVersion) -> ModelCard:
        """The row's card, after its signature is checked (when a verifier is pinned)."""
        card = card_from_row(row)
        if self.verifier is not None:
            why = self.verifier.why_not(
                card.model_dump(mode="json"), row.contract_json, row.signature
            )
            if why:
                log.error("registry row of model %s v%d refused: %s", row.name, row.version, why)
                raise RowRefused(row.name, row.version, why)
        return card

    def card(self, name: str, version: int | None = None) -> ModelCard:
        """The card of one version (None = latest), without reading the weights."""
        with self._sessions() as session:
            return self._verified(self._row(session, name, version, weights=False))

    def get(self, name: str, version: int | None = None) -> StoredModel:
        """One version (None = latest) with weights and contract, integrity-checked."""
        with self._sessions() as session:
            row = self._row(session, name, version, weights=True)
            weights = bytes(row.weights)
            card = self._verified(row)
        where = f"model '{card.name}' v{card.version}"
        if hashlib.sha256(weights).hexdigest() != card.weights_sha256:
            raise RegistryError(
                f"{where}: stored weights do not match their sha256; the row was altered, "
                "republish the model"
            )
        try:
            contract = contract_from_json(row.contract_json)
        except (ContractError, ValueError):
            raise RegistryError(
                f"{where}: stored contract is unreadable; republish the model"
            ) from None
        if contract.hash != card.contract_hash:
            raise RegistryError(
                f"{where}: stored contract does not match its hash; the row was altered, "
                "republish the model"
            )
        return StoredModel(card=card, weights=weights, contract=contract)
