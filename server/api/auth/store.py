"""The API key store: create, rotate, revoke and authenticate keys in the coordinator database."""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from common.db import (
    SQLITE_BEGIN_OPTION,
    make_engine,
    make_session_factory,
    migrate,
    safe_url,
    utcnow,
)
from common.errors import AtollError
from server.api.auth.keys import (
    _DUMMY_SALT,
    _KEY_ID_HEX,
    _NAME_PATTERN,
    _SECRET_BYTES,
    _digest,
    format_key,
    parse_key,
)
from server.api.auth.roles import ROLE_PERMISSIONS, Permission, Role
from server.auth_models import ApiKey

log = logging.getLogger(__name__)


class ApiKeyError(AtollError, ValueError):
    """A key operation cannot be done; the message says why and what to do."""


class Unauthenticated(Exception):
    """Presented credentials are not an active key; `reason` is for logs, never for callers.

    `kind` is the reason without identifiers (what failure audit records count); `key_id` is set
    when the presented id belongs to a real key (a wrong secret or a revoked key).
    """

    def __init__(self, reason: str, kind: str | None = None, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind or reason
        self.key_id = key_id


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


@dataclass(frozen=True)
class ApiKeyInfo:
    """Everything about a key except its secret, salt and hash."""

    key_id: str
    name: str
    role: str
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.key_id, row.name, row.role, row.created_at, row.rotated_at, row.revoked_at
    )


KeyEventHook = Callable[[str, ApiKeyInfo], None]


class ApiKeyStore:
    """API keys in the coordinator database (table `api_keys`, registry migration 0002).

    `on_event(action, info)` ("created", "rotated", "revoked") runs before each change is
    written, so an audit trail can record it; if the hook raises, nothing changes (an action
    that cannot be recorded is refused). Every change is also logged (never the secret).
    """

    def __init__(self, engine: Engine, on_event: KeyEventHook | None = None) -> None:
        self.engine = engine
        self._sessions = make_session_factory(engine)
        self._on_event = on_event
        self._owns_engine = False

    @classmethod
    def open(cls, url: str, on_event: KeyEventHook | None = None) -> ApiKeyStore:
        """A store on its own engine; migrates the database (same migrations as the registry)."""
        from server.registry import MIGRATIONS_DIR

        engine = make_engine(url)
        try:
            migrate(engine, MIGRATIONS_DIR)
        except OperationalError as exc:
            engine.dispose()
            raise ApiKeyError(
                f"cannot open the key store at {safe_url(url)}: "
                f"{str(exc.orig).strip().splitlines()[0]}; check the database is reachable and "
                "the --registry URL is the coordinator's registry"
            ) from None
        store = cls(engine, on_event)
        store._owns_engine = True
        return store

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> ApiKeyStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._sessions() as session, session.begin():
            session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            yield session

    def _record(self, action: str, info: ApiKeyInfo) -> None:
        """Before a change is written: log it and let the audit hook refuse it by raising."""
        log.info("api key %s: id=%s name=%s role=%s", action, info.key_id, info.name, info.role)
        if self._on_event is not None:
            self._on_event(action, info)

    # -- lifecycle --

    def create(self, name: str, role: Role | str) -> tuple[ApiKeyInfo, str]:
        """A new key; returns its info and the full key string, which is never stored."""
        if not _NAME_PATTERN.fullmatch(name):
            raise ApiKeyError(
                "key name must be 1-100 characters of letters, digits, space, '.', '_', '@' or "
                "'-', starting with a letter or digit (e.g. crm-scoring)"
            )
        checked = _role(role)
        key_id, secret, salt = secrets.token_hex(_KEY_ID_HEX // 2), _new_secret(), _salt()
        row = ApiKey(
            key_id=key_id,
            name=name,
            role=checked.value,
            salt=salt,
            secret_hash=_digest(salt, secret),
            created_at=utcnow(),
        )
        info = _info(row)
        self._record("created", info)
        try:
            with self._write() as session:
                session.add(row)
        except IntegrityError:  # a 48-bit id collision: astronomically unlikely
            raise ApiKeyError("the new key id is already taken; run the command again") from None
        return info, format_key(key_id, secret)

    def rotate(self, key_id: str) -> tuple[ApiKeyInfo, str]:
        """A new secret for an active key (same id, name and role); the old secret stops working."""
        secret, salt, now = _new_secret(), _salt(), utcnow()
        with self._sessions() as session:
            current = _info(self._active_row(session, key_id, "rotate"))
        info = replace(current, rotated_at=now)
        self._record("rotated", info)
        with self._write() as session:
            row = self._active_row(session, key_id, "rotate")
            row.salt, row.secret_hash, row.rotated_at = salt, _digest(salt, secret), now
        forget_cached_key(key_id)  # the old secret stops at once in this process
        return info, format_key(key_id, secret)

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Disable a key for good (the row stays, for the record)."""
        now = utcnow()
        with self._sessions() as session:
            current = _info(self._active_row(session, key_id, "be revoked"))
        info = replace(current, revoked_at=now)
        self._record("revoked", info)
        with self._write() as session:
            self._active_row(session, key_id, "be revoked").revoked_at = now
        forget_cached_key(key_id)  # 401 at once in this process
        return info

    def _active_row(self, session: Session, key_id: str, action: str) -> ApiKey:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise ApiKeyError(f"no API key with id '{key_id}'; `atoll apikey list` shows the ids")
        if row.revoked_at is not None:
            raise ApiKeyError(
                f"API key '{key_id}' was revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC and "
                f"cannot {action}; create a new key instead"
            )
        return row

    def list_keys(self) -> list[ApiKeyInfo]:
        """Every key, oldest first, active or not."""
        with self._sessions() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
        return [_info(r) for r in rows]

    # -- checking --

    def authenticate(self, presented: str) -> Principal:
        """The principal of an active key; raises Unauthenticated (reason for logs only)."""
        parsed = parse_key(presented)
        if parsed is None:
            raise Unauthenticated("malformed key")
        key_id, secret = parsed
        with self._sessions() as session:
            row = session.get(ApiKey, key_id)
        if row is None:
            _digest(_DUMMY_SALT, secret)  # same work as a real check
            raise Unauthenticated(f"unknown key id {key_id}", "unknown key")
        if not hmac.compare_digest(_digest(row.salt, secret), row.secret_hash):
            raise Unauthenticated(f"wrong secret for key id {key_id}", "wrong secret", key_id)
        if row.revoked_at is not None:
            raise Unauthenticated(f"revoked key id {key_id}", "revoked key", key_id)
        try:
            role = Role(row.role)
        except ValueError:
            raise Unauthenticated(
                f"key id {key_id} has an unknown role", "unknown role", key_id
            ) from None
        return Principal(key_id=row.key_id, name=row.name, role=role)


def _new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def _salt() -> bytes:
    return secrets.token_bytes(16)


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ApiKeyError(
            f"unknown role '{role}': use one of {', '.join(r.value for r in Role)}"
        ) from None


class _ForgetsKeys(Protocol):
    def forget(self, key_id: str) -> None: ...


_KEY_CACHES: weakref.WeakSet[_ForgetsKeys] = weakref.WeakSet()
_KEY_CACHES_LOCK = threading.Lock()


def register_key_cache(cache: _ForgetsKeys) -> None:
    """Have `forget_cached_key` reach `cache` for as long as it lives."""
    with _KEY_CACHES_LOCK:
        _KEY_CACHES.add(cache)


def forget_cached_key(key_id: str) -> None:
    """Drop `key_id` from every key cache in this process (`ApiKeyStore.rotate`/`revoke` call
    it after their change is committed): the old secret gets 401 on the very next request."""
    with _KEY_CACHES_LOCK:
        caches = list(_KEY_CACHES)
    for cache in caches:
        cache.forget(key_id)
