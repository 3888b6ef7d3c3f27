"""`atoll audit`: signing keys, verification, checkpoints, queries and the reply cross-check.

Exit codes: 0 ok, 1 the log fails verification or the cross-check finds mismatches, 2 the command
could not run (unreadable database, key or file). Output names entries by seq, never their data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atoll.cli_common import fail
from privacy.audit import (
    REPLY_SENT,
    ROUND_REPLY,
    AuditEntry,
    AuditError,
    AuditSigner,
    Checkpoint,
    VerifyReport,
    canonical_json,
    checkpoint_path,
    crosscheck,
    export_checkpoint,
    export_jsonl,
    iter_entries,
    latest_checkpoint,
    list_log_ids,
    load_public_keys,
    read_jsonl,
    verify,
    verify_entries,
)

audit_app = typer.Typer(
    help="Tamper-evident audit logs: keys, verify, checkpoint, export, show, cross-check.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold data: never print them
)
console = Console(stderr=True)
stdout = Console()

DbOption = Annotated[
    str,
    typer.Option("--db", help="Audit database URL (sqlite:///file.db or postgresql+psycopg://)"),
]
LogOption = Annotated[str, typer.Option("--log", help="Log id, e.g. coordinator or node:marketing")]
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


@contextmanager
def _audit_errors() -> Iterator[None]:
    """Turn audit errors (which already say what to do) into exit code 2."""
    try:
        yield
    except AuditError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")


def _when(value: str | None, option: str) -> datetime | None:
    """Parse an ISO 8601 time; a time without zone is taken as UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be an ISO 8601 time like 2025-01-31 or 2025-01-31T12:00:00Z")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _print_report(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        stdout.print_json(report.model_dump_json())
        return
    signers = ", ".join(f"{k[:12]}…×{n}" for k, n in report.signers.items()) or "none"
    if report.ok:
        stdout.print(
            f"[green]ok[/] log '{escape(report.log_id)}': {escape(report.message)} "
            f"(last seq {report.last_seq}, signers {signers})"
            + (f", checkpoint at seq {report.checkpoint_seq}" if report.checkpoint_seq else "")
            + (f" ({escape(report.checkpoint_file)})" if report.checkpoint_file else "")
        )
        return
    where = f"seq {report.first_bad_seq}" if report.first_bad_seq is not None else "checkpoint"
    stdout.print(
        f"[bold red]FAILED[/] log '{escape(report.log_id)}': first bad entry {where} — "
        f"{report.problem}: {escape(report.message)} ({report.entries} entries verified before it)"
    )


# ---- keys --------------------------------------------------------------------------------------


@audit_app.command("keygen")
def keygen(
    path: Annotated[
        Path, typer.Argument(help="Private key to create, e.g. deploy/keys/audit/coordinator.pem")
    ],
) -> None:
    """Create an Ed25519 audit signing key (mode 600, directory 700) and its .pub file."""
    with _audit_errors():
        signer = AuditSigner.create(path)
    console.print(
        f"private key {path} (mode 600) — keep it with the writer, never share it\n"
        f"public key {AuditSigner.public_key_path(path)} — give it to whoever verifies the log\n"
        f"key id {signer.key_id}"
    )


# ---- verification and checkpoints -------------------------------------------------------------


def _checkpoint_file(path: Path, log: str) -> tuple[Path, Checkpoint]:
    """A checkpoint file, or the newest checkpoint of `log` in a directory."""
    if path.is_dir():
        found = latest_checkpoint(path, log)
        if found is None:
            fail(
                f"no checkpoint of log '{log}' in {path}; pass the checkpoint file, or write one "
                "with `atoll audit checkpoint`"
            )
        return found
    return path, Checkpoint.load(path)


@audit_app.command("verify")
def verify_cmd(
    public_key: Annotated[
        list[Path],
        typer.Option(
            help="Writer's .pub file, from your own records — never one found beside the log's "
            "signing key (repeat for every key the log used)"
        ),
    ],
    log: LogOption = "coordinator",
    db: Annotated[str | None, typer.Option("--db", help="Audit database URL")] = None,
    jsonl: Annotated[
        Path | None, typer.Option(help="Verify an unfiltered `audit export` file instead of --db")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Signed checkpoint, or a directory of them (its newest for --log): detects a "
            "deleted tail, and an emptied log"
        ),
    ] = None,
    checkpoint_public_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Other keys the checkpoint may be signed with (e.g. api.pub for the admin log's "
            "checkpoints the API writes)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Verify sequence, hash chain and signatures; exit 1 naming the first bad entry."""
    if db is not None and jsonl is not None:
        fail("pass either --db URL or --jsonl FILE, not both")
    with _audit_errors():
        keys = load_public_keys(public_key)
        extra = load_public_keys(checkpoint_public_key or [])
        found = _checkpoint_file(checkpoint, log) if checkpoint is not None else None
        mark = found[1] if found else None
        if jsonl is not None:
            report = verify_entries(read_jsonl(jsonl), log, keys, mark, checkpoint_keys=extra)
        elif db is not None:
            report = verify(db, log, keys, mark, checkpoint_keys=extra)
        else:
            fail("pass --db URL (the audit database) or --jsonl FILE (an unfiltered export)")
    if found is not None:
        report = report.model_copy(update={"checkpoint_file": str(found[0])})
    _print_report(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


def _keys_per_log(specs: list[str], logs: list[str]) -> dict[str, dict[str, str]]:
    """`--public-key [LOG=]FILE` values → {log: {key_id: pem}}; plain FILEs apply to every log."""
    common: list[Path] = []
    per_log: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if sep and name and not Path(spec).exists():
            per_log.setdefault(name, []).append(Path(file))
        else:
            common.append(Path(spec))
    unknown = sorted(set(per_log) - set(logs))
    if unknown:
        fail(f"--public-key names log(s) {', '.join(unknown)} that are not being checkpointed")
    shared = load_public_keys(common)
    return {log: {**shared, **load_public_keys(per_log.get(log, []))} for log in logs}


@audit_app.command("checkpoint")
def checkpoint_cmd(
    db: DbOption,
    key: Annotated[Path, typer.Option(help="Signing key from `atoll audit keygen`")],
    out: Annotated[
        Path,
        typer.Option(
            help="Checkpoint file to write, or a directory (one file per log, named "
            "<log>.<seq>.json); keep it off this host"
        ),
    ],
    public_key: Annotated[
        list[str],
        typer.Option(
            help="[LOG=]FILE: pinned public key the log's entries must verify with (repeat; "
            "without LOG= it applies to every log)"
        ),
    ],
    log: Annotated[
        list[str] | None,
        typer.Option("--log", help="Log id (repeat); default coordinator"),
    ] = None,
    all_logs: Annotated[
        bool, typer.Option("--all-logs", help="Every log in the database (api, admin, ...)")
    ] = False,
) -> None:
    """Verify each log, then write a signed checkpoint (count + last hash) of it.

    A checkpoint must extend the previous one in --out (same entry at its seq): a log that was
    truncated or rewritten gets none, and the command exits 1.
    """
    if all_logs and log:
        fail("pass either --log (repeat) or --all-logs, not both")
    with _audit_errors():
        signer = AuditSigner.load(key)
        logs = list_log_ids(db) if all_logs else list(dict.fromkeys(log or ["coordinator"]))
        if not logs:
            fail("the database holds no audit log entries; nothing to checkpoint")
        keys = _keys_per_log(public_key, logs)
        # An earlier checkpoint may be signed by any pinned key, or by this signer.
        trusted = {k: pem for per_log in keys.values() for k, pem in per_log.items()}
        trusted[signer.key_id] = signer.public_key_pem
        directory = all_logs or len(logs) > 1 or out.is_dir() or str(out).endswith("/")
        failed = 0
        for log_id in logs:
            target = checkpoint_path(out, log_id, 0) if directory else out
            previous = (
                latest_checkpoint(out, log_id)
                if directory
                else ((out, Checkpoint.load(out)) if out.is_file() else None)
            )
            last = previous[1] if previous and previous[1].log_id == log_id else None
            report = verify(db, log_id, keys[log_id], last, checkpoint_keys=trusted)
            if not report.ok:
                _print_report(report, as_json=False)
                console.print(
                    f"[bold red]refusing to checkpoint log '{escape(log_id)}': it fails "
                    "verification[/]"
                )
                failed += 1
                continue
            mark = export_checkpoint(db, log_id, signer, extends=last)
            if directory:
                target = checkpoint_path(out, log_id, mark.last_seq)
                target.parent.mkdir(parents=True, exist_ok=True)
            mark.save(target)
            console.print(
                f"checkpoint {target}: log '{escape(log_id)}' {mark.count} entries, "
                f"last hash {mark.last_hash}"
            )
    if failed:
        raise typer.Exit(1)


# ---- queries -----------------------------------------------------------------------------------


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


@audit_app.command("export")
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
    with _audit_errors():
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


@audit_app.command("show")
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
    with _audit_errors():
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


# ---- cross-check -------------------------------------------------------------------------------


@audit_app.command("crosscheck")
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
    with _audit_errors():
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
