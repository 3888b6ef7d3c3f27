"""What the ledger's journal stores and authenticates, as text (see `privacy.journal`).

Canonical JSON (the exact text an entry's payload is MACed as), the fixed-width UTC timestamps,
the genesis entry's payload (`Genesis`), the anchor kept outside the database (`Anchor`) and one
stored entry (`Entry`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

ANCHOR_FORMAT: Final = "atoll-ledger-anchor/1"
JOURNAL_FORMAT: Final = "atoll-ledger-journal/1"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
TS_EXAMPLE = "2025-01-01T00:00:00.000000Z"
_ANCHOR_DOMAIN = b"atoll-ledger-anchor/1\n"


def canonical(value: BaseModel | dict[str, object] | list[object]) -> str:
    """Deterministic JSON text: sorted keys, no spaces, ASCII only, no NaN/inf."""
    plain = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def format_ts(moment: datetime) -> str:
    """The fixed-width UTC text stored (and authenticated) for a timestamp."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass an aware datetime (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC).strftime(TS_FORMAT)


def parse_ts(value: str) -> datetime:
    """Inverse of `format_ts` (fromisoformat: ~20× faster than strptime on every replay)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None or len(value) != len(TS_EXAMPLE):
        raise ValueError(f"not a journal timestamp: {value!r}")
    return moment


class Genesis(BaseModel):
    """Payload of entry 1 (kind `init`): which ledger this journal is (matched to the anchor)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["atoll-ledger-journal/1"] = JOURNAL_FORMAT
    ledger_id: str
    node: str


class Anchor(BaseModel):
    """The head of the journal, kept outside the database and authenticated with the same key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["atoll-ledger-anchor/1"] = ANCHOR_FORMAT
    ledger_id: str
    node: str
    head_seq: int = Field(ge=0)
    head_mac: str = Field(pattern=r"^[0-9a-f]{64}$")
    mac: str = ""

    def signed_bytes(self) -> bytes:
        return _ANCHOR_DOMAIN + canonical(self.model_dump(mode="json", exclude={"mac"})).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry as stored: the payload is the exact canonical text that was MACed."""

    seq: int
    kind: str
    run_id: str | None
    payload: str
    created_at: str
    prev_mac: str
    mac: str

    @property
    def timestamp(self) -> datetime:
        return parse_ts(self.created_at)
