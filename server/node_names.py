"""Which node is which: the SuperLink's authenticated node id → the name it was registered under.

`atoll node register` (and LocalFederation) write a row when the SuperLink admits a node's key;
the ServerApp attributes every reply, spend report, participant and audit entry to this name,
never to a name a reply claims for itself.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from common.db import UTCDateTime, make_engine, migrate, utcnow
from server.registry import MIGRATIONS_DIR
from server.registry_models import Base


class NodeName(Base):
    __tablename__ = "node_names"

    node_id: Mapped[str] = mapped_column(String(20), primary_key=True)  # a uint64, as text
    name: Mapped[str] = mapped_column(String(100), unique=True)
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NodeNames:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrate(self.engine, MIGRATIONS_DIR)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def add(self, node_id: int, name: str, public_key_sha256: str) -> None:
        with self._sessions() as s, s.begin():
            s.merge(
                NodeName(
                    node_id=str(int(node_id)),
                    name=name,
                    public_key_sha256=public_key_sha256,
                    registered_at=utcnow(),
                )
            )

    def all(self) -> dict[int, str]:
        with self._sessions() as s:
            return {int(r.node_id): r.name for r in s.scalars(select(NodeName)).all()}

    def close(self) -> None:
        self.engine.dispose()
