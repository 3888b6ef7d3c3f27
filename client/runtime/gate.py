"""The order every node-runtime request follows, and what may leave when it fails.

`RequestGate` serialises requests (the ledger decides them in order), checks the ledger's
integrity, audits each request before it is decided, and turns failures into refusals: a
refusal before the charge names its check (`NodeError`); after the charge (`after_charge()`),
any failure is the one constant refusal `FAILED`, and a bug is `INTERNAL` — never an
exception's text, which may quote a value. `client.runtime.service.NodeService` decides the
requests.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from client.node import NodeError
from client.runtime.admission import refuse
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import AuditLog, AuditWriteError
from privacy.ledger import Ledger, LedgerUnavailable

log = logging.getLogger("atoll.runtime")
FAILED = pb.Refusal(
    code="failed", message="the node could not complete this request; it stays charged"
)
INTERNAL = pb.Refusal(code="internal", message="the node hit an internal error; see its log")
R = TypeVar("R")


class RequestGate:
    """Serialise, verify the ledger, audit, and refuse without detail after the charge."""

    ledger: Ledger
    audit_log: AuditLog
    actor: str
    _lock: threading.Lock

    # -- plumbing ----------------------------------------------------------------------------
    def _audit(self, run_id: str, action: str, **details: object) -> None:
        try:
            self.audit_log.append(self.actor, action, f"run:{run_id[:60]}", details)
        except AuditWriteError as err:
            raise NodeError("audit", "the node's audit log cannot be written") from err

    @contextmanager
    def _request(self, caller: pb.Caller, kind: str) -> Iterator[None]:
        """Serialise, check the ledger, audit the request; refusals stay NodeErrors."""
        with self._lock:
            try:
                self.ledger.verify()
            except LedgerUnavailable as err:
                log.error("ledger unavailable: %s", err)
                raise refuse(
                    "ledger-unavailable",
                    "this node's ledger fails its integrity "
                    "check; it serves nothing until its owner restores it",
                ) from None
            self._audit(
                caller.run_id, "request.received", kind=kind, message=caller.message_id[:80]
            )
            yield

    def _answer(
        self,
        caller: pb.Caller,
        kind: str,
        decide: Callable[[], R],
        refused: Callable[[pb.Refusal], R],
    ) -> R:
        """Decide under the lock; refusals and failures are audited (with the message id)
        before the lock is released, so the log reads in the order requests were decided."""
        msg = caller.message_id[:80]
        try:
            with self._request(caller, kind):
                try:
                    reply = decide()
                except NodeError as err:
                    log.warning("%s refused: code=%s", kind, err.code)
                    self._audit_quietly(
                        caller.run_id,
                        "request.refused",
                        kind=kind,
                        message=msg,
                        code=err.code,
                        reason=err.reason,
                    )
                    return refused(pb.Refusal(code=err.code, message=err.reason[:500]))
                except ChargedFailure:
                    self._audit_quietly(caller.run_id, "request.failed", kind=kind, message=msg)
                    return refused(FAILED)
                except Exception as err:  # noqa: BLE001 - a bug must not leak detail either
                    _log_failure(kind, err)
                    self._audit_quietly(caller.run_id, "request.failed", kind=kind, message=msg)
                    return refused(INTERNAL)
            log.info("%s answered: run=%s", kind, caller.run_id[:40])
            return reply
        except NodeError as err:  # the ledger check or the first audit write failed
            log.warning("%s refused: code=%s", kind, err.code)
            return refused(pb.Refusal(code=err.code, message=err.reason[:500]))

    def _audit_quietly(self, run_id: str, action: str, **details: object) -> None:
        try:
            self._audit(run_id, action, **details)
        except NodeError:
            log.error("audit write failed for %s", action)


class ChargedFailure(Exception):
    """A failure after the charge: it becomes the constant refusal, never its detail."""


@contextmanager
def after_charge() -> Iterator[None]:
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever happened, only a constant leaves
        _log_failure("charged request", err)
        raise ChargedFailure from None


def _log_failure(what: str, err: BaseException) -> None:
    """Type and place only: an exception's text may quote a value."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    log.error(
        "%s failed: type=%s at=%s:%s",
        what,
        type(err).__name__,
        Path(frame.filename).name,
        frame.lineno,
    )
