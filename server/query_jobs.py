"""Submitting an analytics query as a run of the signed app, and following it to its stored result.

`QuerySubmitter` does what `atoll query run` does: stage the contract where the ServerApp finds
it by hash, submit the run (`flwr run`, TLS, the coordinator's signed app) and wait for its
outcome; the ServerApp (`server.analytics.run_query`) stores the answer. `SubmissionStore` keeps
the queries submitted through the API (queued → running → answered | failed), so a caller can
poll one until its result is in `analytics_queries`. Nothing here knows about HTTP.

The submitter's settings are the coordinator host's: a TOML file named by `$ATOLL_QUERY_RUNNER`

    flwr-home = "/var/lib/atoll/coordinator-flwr"      # the flwr CLI's home (connection file)
    superlink = "127.0.0.1:9093"                       # optional: (re)write the connection
    ca = "/etc/atoll/certs/ca.crt"                     # with superlink
    contracts-dir = "/var/lib/atoll/contracts"         # = `atoll superlink start --contracts`
    app = "@atoll/atoll==0.1.0"                        # a signed build (default: the app dir)
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from common.analytics_math import Query
from common.contract import Contract
from common.db import utcnow
from common.errors import AtollError
from server.query_store import QueryStore, SubmissionRecord

log = logging.getLogger(__name__)
ENV = "ATOLL_QUERY_RUNNER"


class QueryRunnerError(AtollError, RuntimeError):
    """Query submission is not set up on this host, or its settings are invalid."""


class QueryRunnerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    flwr_home: Path = Field(alias="flwr-home")
    contracts_dir: Path = Field(alias="contracts-dir")
    superlink: str | None = None
    ca: Path | None = None
    app: str = Field("", description="The signed app to run (empty: this package's app dir)")
    min_nodes: int | None = Field(None, alias="min-nodes", ge=1)
    timeout: float = Field(900, gt=0, description="Seconds one query run may take")

    @classmethod
    def from_env(cls) -> QueryRunnerSettings | None:
        """From the file named by $ATOLL_QUERY_RUNNER (None if unset), or a clear error."""
        name = os.environ.get(ENV, "")
        if not name:
            return None
        path = Path(name)
        try:
            return cls.model_validate(tomllib.loads(path.read_text()))
        except OSError as err:
            raise QueryRunnerError(f"query runner settings {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise QueryRunnerError(f"query runner settings {path}: {err}") from None
        except ValidationError as err:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise QueryRunnerError(f"query runner settings {path}: {where}") from None


@dataclass(frozen=True)
class Submitted:
    exit_code: int
    run_id: str | None
    log_path: Path


def stage(contract: Contract, contracts_dir: Path) -> str:
    """Put `contract` where the ServerApp resolves it by hash; returns the hash."""
    contracts_dir.mkdir(parents=True, exist_ok=True)
    target = contracts_dir / f"{contract.hash}.json"
    if not target.exists():
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(contract.canonical_json())
        tmp.replace(target)  # atomic: a concurrent run never reads half a contract
    return contract.hash


class QuerySubmitter:
    """Submits query runs through the SuperLink (the CLI's `atoll query run` and the API)."""

    def __init__(self, settings: QueryRunnerSettings) -> None:
        self.settings = settings

    def submit(
        self, query: Query, contract: Contract, *, extra: dict[str, Any] | None = None
    ) -> Submitted:
        from atoll.flower_cli import write_connection
        from atoll.runs import APP_DIR, follow_run

        s = self.settings
        home = s.flwr_home.resolve()
        if s.superlink is not None:
            if s.ca is None:
                raise QueryRunnerError("query runner: superlink is set but ca is not")
            write_connection(home, "atoll", s.superlink, s.ca.resolve())
        config: dict[str, Any] = {
            "contract-hash": stage(contract, s.contracts_dir),
            "query": query.model_dump_json(),
            **(extra or {}),
        }
        if s.min_nodes is not None:
            config["min-nodes"] = s.min_nodes
        log_path = home / "runs.log"
        outcome = follow_run(
            flwr_home=home,
            config=config,
            work=home / "runs",
            log_path=log_path,
            app=s.app or APP_DIR,
            timeout=s.timeout,
            contracts_dir=s.contracts_dir,
        )
        return Submitted(outcome.exit_code, outcome.run_id, log_path)


# ================================================================================================
# Submissions through the API
# ================================================================================================
class SubmissionStore:
    """`analytics_submissions` on an engine the caller owns (already migrated, e.g. the
    registry's)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(self, *, submitted_by: str, contract_hash: str, spec: dict[str, Any]) -> int:
        with self._sessions() as s, s.begin():
            row = SubmissionRecord(
                status="queued",
                submitted_by=submitted_by,
                contract_hash=contract_hash,
                spec=spec,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def update(self, sid: int, **fields: Any) -> None:
        with self._sessions() as s, s.begin():
            row = s.get(SubmissionRecord, sid)
            if row is None:
                raise KeyError(sid)
            for k, v in fields.items():
                setattr(row, k, v)

    def get(self, sid: int) -> SubmissionRecord | None:
        with self._sessions() as s:
            return s.get(SubmissionRecord, sid)

    def all(self, limit: int = 100) -> list[SubmissionRecord]:
        with self._sessions() as s:
            q = select(SubmissionRecord).order_by(SubmissionRecord.id.desc()).limit(limit)
            return list(s.scalars(q).all())


def execute(
    submissions: SubmissionStore,
    queries: QueryStore,
    submitter: QuerySubmitter,
    sid: int,
    query: Query,
    contract: Contract,
) -> None:
    """Run submission `sid` to its end; its row says answered (with the query id) or why not.

    Never raises: it runs in the background, and the row is the only way its caller learns."""
    submissions.update(sid, status="running")
    try:
        outcome = submitter.submit(query, contract)
        record = queries.by_run(outcome.run_id) if outcome.run_id else None
        if record is not None:
            status = "answered" if record.status == "answered" else "failed"
            error = None if status == "answered" else "no node answered; see the query's nodes"
            submissions.update(
                sid,
                status=status,
                run_id=outcome.run_id,
                query_id=record.id,
                error=error,
                finished_at=utcnow(),
            )
            return
        error = (
            f"the run {'(' + outcome.run_id + ') ' if outcome.run_id else ''}ended with exit code "
            f"{outcome.exit_code} and stored no result; see the coordinator's run log"
        )
        submissions.update(
            sid, status="failed", run_id=outcome.run_id, error=error, finished_at=utcnow()
        )
    except Exception as err:  # noqa: BLE001 - the submission row is the report
        log.warning("query submission %d failed: %s", sid, type(err).__name__)
        submissions.update(
            sid,
            status="failed",
            error=f"{type(err).__name__}: {str(err)[:300]}",
            finished_at=utcnow(),
        )
