"""`atoll audit export`, `show` and `crosscheck`: reading a log's entries, filtered, and comparing
what a node sent with what the coordinator recorded. `atoll.cli_audit` registers them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from atoll.cli_audit_common import DbOption, LogOption, audit_errors, console, stdout
from atoll.cli_common import fail
from privacy.audit import (
    REPLY_SENT,
    ROUND_REPLY,
    AuditEntry,
    canonical_json,
    crosscheck,
    export_jsonl,
    iter_entries,
)

SinceOption = Annotated[
    str | None, typer.Option(help="From this UTC time (ISO 8601, inclusive), e.g. 2025-01-31")
]
UntilOption = Annotated[str | None, typer.Option(help="Before this UTC time (ISO 8601, exclusive)")]
ActorOption = Annotated[
    str | None, typer.Option(help="Actor, e.g. node:marketing; 'node:*' = prefix")
]
ActionOption = Annotated[
    str | None, typer.Option(help="Action, e.g. api.predict; 'round.*' = prefix")
]
SubjectOption = Annotated[
    str | None, typer.Option(help="Subject, e.g. run:42 or 'model:churn/*' (run, model, key...)")
]


def _when(value: str | None, option: str) -> datetime | None:
    """Parse an ISO 8601 time; a time without zone is taken as UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be an ISO 8601 time like 2025-01-31 or 2025-01-31T12:00:00Z")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _entries(
    db: str,
    log: str,
    since: str | None,
    until: str | None,
    actor: str | None,
    action: str | None,
    subject: str | None,
    limit: int | None,
    newest_first: bool = False,
) -> Iterator[AuditEntry]:
    return iter_entries(
        db,
        log,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
        actor=actor,
        action=action,
        subject=subject,
        limit=limit,
        newest_first=newest_first,
    )


def export_cmd(
    db: DbOption,
    log: LogOption = "coordinator",
    out: Annotated[Path, typer.Option(help="JSON Lines file; '-' for stdout")] = Path("-"),
    since: SinceOption = None,
    until: UntilOption = None,
    actor: ActorOption = None,
    action: ActionOption = None,
    subject: SubjectOption = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many entries")] = None,
) -> None:
    """Export entries as JSON Lines (unfiltered exports verify with `verify --jsonl`)."""
    with audit_errors():
        count = export_jsonl(
            db,
            log,
            sys.stdout if str(out) == "-" else out,
            since=_when(since, "--since"),
            until=_when(until, "--until"),
            actor=actor,
            action=action,
            subject=subject,
            limit=limit,
        )
    console.print(f"exported {count} entries of log '{escape(log)}'")


def _cell(details: dict[str, object], width: int = 70) -> str:
    text = canonical_json(details)
    return text if len(text) <= width else text[: width - 1] + "…"


def show_cmd(
    db: DbOption,
    log: LogOption = "coordinator",
    since: SinceOption = None,
    until: UntilOption = None,
    actor: ActorOption = None,
    action: ActionOption = None,
    subject: SubjectOption = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries")] = 50,
    newest: Annotated[bool, typer.Option(help="Newest entries first")] = False,
) -> None:
    """Show entries as a table (use `verify` to check them)."""
    table = Table(title=f"audit log {log}")
    for name in ("seq", "time (UTC)", "action"):
        table.add_column(name, no_wrap=True)
    for name in ("actor", "subject", "details", "key"):
        table.add_column(name, overflow="fold")
    with audit_errors():
        for e in _entries(db, log, since, until, actor, action, subject, limit, newest):
            table.add_row(
                str(e.seq),
                e.ts[:19].replace("T", " "),
                escape(e.action),
                escape(e.actor),
                escape(e.subject),
                escape(_cell(e.details)),
                e.key_id[:8],
            )
    stdout.print(table)


def crosscheck_cmd(
    coordinator_db: Annotated[str, typer.Option(help="Coordinator's audit database URL")],
    node_db: Annotated[str, typer.Option(help="The node's audit database URL")],
    node_log: Annotated[str, typer.Option(help="The node's log id, e.g. node:marketing")],
    coordinator_log: Annotated[str, typer.Option(help="Coordinator's log id")] = "coordinator",
    node: Annotated[
        str | None,
        typer.Option(help="Node name in the coordinator's log (default: from --node-log)"),
    ] = None,
    run: Annotated[str | None, typer.Option(help="Only this run id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print mismatches as JSON")] = False,
) -> None:
    """Compare update digests, examples and ε the coordinator recorded with what the node sent."""
    name = node or (node_log.split(":", 1)[1] if node_log.startswith("node:") else None)
    with audit_errors():
        theirs = list(iter_entries(node_db, node_log, action=REPLY_SENT))
        ours = list(iter_entries(coordinator_db, coordinator_log, action=ROUND_REPLY))
    mismatches = crosscheck(ours, theirs, nodes=[name] if name else None, run=run)
    if as_json:
        stdout.print_json(json.dumps([m.model_dump(mode="json") for m in mismatches]))
    elif not mismatches:
        stdout.print(
            f"[green]ok[/] {len(theirs)} replies sent by node '{escape(name or node_log)}' match "
            f"the coordinator's record"
        )
    else:
        table = Table(title=f"{len(mismatches)} mismatches")
        for column in ("run", "round", "node", "problem", "field", "coordinator", "node value"):
            table.add_column(column, overflow="fold")
        for m in mismatches:
            table.add_row(
                escape(m.run),
                str(m.round),
                escape(m.node),
                m.problem,
                m.field or "",
                f"{m.coordinator_value} (seq {m.coordinator_seq})" if m.coordinator_seq else "—",
                f"{m.node_value} (seq {m.node_seq})" if m.node_seq else "—",
            )
        stdout.print(table)
    if mismatches:
        raise typer.Exit(1)
