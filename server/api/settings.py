"""Everything the scoring API is configured with, in one validated object.

`create_app(registry_url, ...)` builds one from its keyword arguments; `ApiSettings.from_env()`
reads the same settings from ATOLL_* environment variables (for `uvicorn --factory
server.api.app:app_from_env`). Public keys are the verifier's pinned configuration: the API never
trusts a key because it sits beside the signing key or in the database it verifies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.api.audit_trail import default_key_path
from server.api.auth import DEFAULT_KEY_CACHE_SECONDS
from server.api.deps import DEFAULT_LATEST_CACHE_SECONDS
from server.api.limits import (
    DEFAULT_CLIENT_RATE_BURST,
    DEFAULT_CLIENT_RATE_PER_SECOND,
    DEFAULT_CLIENT_TABLE_SIZE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_SECOND,
)

DEFAULT_MAX_RECORDS = 1000
DEFAULT_CHECKPOINT_EVERY_ENTRIES = 1000
DEFAULT_CHECKPOINT_EVERY_MINUTES = 10.0
# Further settings read from the environment by `ApiSettings.from_env` (name -> field).
ENV_FIELDS = {
    "ATOLL_RATE_LIMIT_URL": "rate_limit_url",
    "ATOLL_API_RATE_PER_SECOND": "rate_per_second",
    "ATOLL_API_RATE_BURST": "rate_burst",
    "ATOLL_API_KEY_CACHE_SECONDS": "key_cache_seconds",
    "ATOLL_API_LATEST_CACHE_SECONDS": "latest_cache_seconds",
}


class ApiSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    registry_url: str = Field(description="Coordinator database (registry, keys, audit logs)")
    max_records: int = Field(DEFAULT_MAX_RECORDS, ge=1, description="Records per scoring request")
    model_cache_size: int = Field(16, ge=1)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    rate_per_second: float = Field(DEFAULT_RATE_PER_SECOND, gt=0, description="Per API key")
    rate_burst: int = Field(DEFAULT_RATE_BURST, ge=1)
    client_rate_per_second: float = Field(
        DEFAULT_CLIENT_RATE_PER_SECOND,
        gt=0,
        description="Failed or unauthenticated requests per client address, before authentication",
    )
    client_rate_burst: int = Field(DEFAULT_CLIENT_RATE_BURST, ge=1)
    client_table_size: int = Field(DEFAULT_CLIENT_TABLE_SIZE, ge=1)
    auth_failure_max_clients: int = Field(
        1000, ge=1, description="Addresses per minute with their own auth.failed entry"
    )
    audit_key: Path | None = Field(
        None, description="The API's Ed25519 signing key (default: beside a SQLite registry)"
    )
    audit_public_keys: list[Path] = Field(
        default_factory=list,
        description="Pinned public keys of the other logs (coordinator, node:<name>)",
    )
    api_public_keys: list[Path] = Field(
        default_factory=list,
        description="Pinned public keys of the api log; the signing key must be one of them",
    )
    admin_public_keys: list[Path] = Field(
        default_factory=list, description="Pinned public keys of the admin (operator) log"
    )
    registry_public_keys: list[Path] = Field(
        default_factory=list,
        description="Pinned public key(s) of the coordinator's publishing key: a model is served "
        "only if its registry row verifies (required: the API does not start without one)",
    )
    checkpoint_dir: Path | None = Field(
        None, description="Where signed checkpoints of the api and admin logs go (off-host)"
    )
    checkpoint_every_entries: int = Field(DEFAULT_CHECKPOINT_EVERY_ENTRIES, ge=1)
    checkpoint_every_minutes: float = Field(DEFAULT_CHECKPOINT_EVERY_MINUTES, gt=0)
    maintenance_seconds: float = Field(
        5.0, gt=0, description="How often failure tallies are flushed and checkpoints checked"
    )
    key_cache_seconds: float = Field(
        DEFAULT_KEY_CACHE_SECONDS,
        ge=0,
        le=60,
        description="How long a verified key is trusted without a query; a key revoked or "
        "rotated by another process stops working within this time (in this process: at once)",
    )
    latest_cache_seconds: float = Field(
        DEFAULT_LATEST_CACHE_SECONDS,
        ge=0,
        le=60,
        description="How long 'latest' is remembered; a new publish is served within this time",
    )
    rate_limit_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0) for per-key rate limits shared by all API "
        "workers; unset: in process (one worker)",
    )

    @model_validator(mode="after")
    def _rate_limit_store(self) -> ApiSettings:
        url = self.rate_limit_url
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "rate_limit_url must be a Redis URL (redis://host:6379/0, rediss://... or "
                "unix:///path/redis.sock)"
            )
        return self

    @model_validator(mode="after")
    def _checkpoints_away_from_the_key(self) -> ApiSettings:
        if self.checkpoint_dir is not None:
            key = self.key_path()
            key_dir = key.expanduser().resolve().parent
            target = self.checkpoint_dir.expanduser().resolve()
            if target.is_relative_to(key_dir):
                raise ValueError(
                    f"checkpoint directory {self.checkpoint_dir} is beside the signing key {key}: "
                    "whoever can replace the key could rewrite the checkpoints too; use a "
                    "directory on another volume or host (e.g. a mounted share)"
                )
        return self

    def key_path(self) -> Path:
        """The API's signing key: `audit_key`, or the default beside a SQLite registry."""
        return self.audit_key or default_key_path(self.registry_url)

    def to_env(self) -> dict[str, str]:
        """These settings as the ATOLL_* variables `from_env` reads back (for worker processes:
        `from_env(s.to_env())` equals `s` in everything `from_env` covers)."""

        def paths(items: list[Path]) -> str:
            return os.pathsep.join(str(p) for p in items)

        env = {
            "ATOLL_REGISTRY_URL": self.registry_url,
            "ATOLL_API_AUDIT_KEY": str(self.key_path()),
            "ATOLL_AUDIT_PUBLIC_KEYS": paths(self.audit_public_keys),
            "ATOLL_API_AUDIT_PUBLIC_KEYS": paths(self.api_public_keys),
            "ATOLL_ADMIN_AUDIT_PUBLIC_KEYS": paths(self.admin_public_keys),
            "ATOLL_REGISTRY_PUBLIC_KEYS": paths(self.registry_public_keys),
            "ATOLL_AUDIT_CHECKPOINT_DIR": str(self.checkpoint_dir or ""),
            "ATOLL_AUDIT_CHECKPOINT_EVERY": str(self.checkpoint_every_entries),
            "ATOLL_AUDIT_CHECKPOINT_MINUTES": repr(self.checkpoint_every_minutes),
        }
        for name, field in ENV_FIELDS.items():
            value = getattr(self, field)
            env[name] = (
                "" if value is None else repr(value) if isinstance(value, float) else str(value)
            )
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        """ATOLL_REGISTRY_URL (required), ATOLL_API_AUDIT_KEY, ATOLL_AUDIT_PUBLIC_KEYS,
        ATOLL_API_AUDIT_PUBLIC_KEYS, ATOLL_ADMIN_AUDIT_PUBLIC_KEYS, ATOLL_REGISTRY_PUBLIC_KEYS
        (paths separated by os.pathsep), ATOLL_AUDIT_CHECKPOINT_DIR,
        ATOLL_AUDIT_CHECKPOINT_EVERY (entries), ATOLL_AUDIT_CHECKPOINT_MINUTES,
        ATOLL_RATE_LIMIT_URL (Redis, shared by workers),
        ATOLL_API_RATE_PER_SECOND, ATOLL_API_RATE_BURST, ATOLL_API_KEY_CACHE_SECONDS,
        ATOLL_API_LATEST_CACHE_SECONDS. `atoll serve --workers N` passes its options to the
        workers this way."""
        env = os.environ if env is None else env
        url = env.get("ATOLL_REGISTRY_URL")
        if not url:
            raise RuntimeError(
                "set ATOLL_REGISTRY_URL to the registry database URL to serve models"
            )

        def paths(name: str) -> list[Path]:
            return [Path(p) for p in env.get(name, "").split(os.pathsep) if p]

        values: dict[str, object] = {
            "registry_url": url,
            "audit_public_keys": paths("ATOLL_AUDIT_PUBLIC_KEYS"),
            "api_public_keys": paths("ATOLL_API_AUDIT_PUBLIC_KEYS"),
            "admin_public_keys": paths("ATOLL_ADMIN_AUDIT_PUBLIC_KEYS"),
            "registry_public_keys": paths("ATOLL_REGISTRY_PUBLIC_KEYS"),
        }
        if key := env.get("ATOLL_API_AUDIT_KEY"):
            values["audit_key"] = Path(key)
        if directory := env.get("ATOLL_AUDIT_CHECKPOINT_DIR"):
            values["checkpoint_dir"] = Path(directory)
        if every := env.get("ATOLL_AUDIT_CHECKPOINT_EVERY"):
            values["checkpoint_every_entries"] = every
        if minutes := env.get("ATOLL_AUDIT_CHECKPOINT_MINUTES"):
            values["checkpoint_every_minutes"] = minutes
        for name, field in ENV_FIELDS.items():
            if value := env.get(name):
                values[field] = value
        return cls.model_validate(values)
