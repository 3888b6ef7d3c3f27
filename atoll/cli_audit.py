"""`atoll audit`: signing keys, verification, checkpoints, queries and the reply cross-check.

This module holds the Typer app and the commands that check a log (keygen, verify, checkpoint);
the commands that read its entries (export, show, crosscheck) are `atoll.cli_audit_entries`.

Exit codes: 0 ok, 1 the log fails verification or the cross-check finds mismatches, 2 the command
could not run (unreadable database, key or file). Output names entries by seq, never their data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from atoll.cli_audit_common import DbOption, LogOption, audit_errors, console, stdout
from atoll.cli_audit_entries import crosscheck_cmd, export_cmd, show_cmd
from atoll.cli_common import fail
from privacy.audit import (
    AuditSigner,
    Checkpoint,
    VerifyReport,
    checkpoint_path,
    export_checkpoint,
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
    with audit_errors():
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
    with audit_errors():
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
    with audit_errors():
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


# the commands that read entries (atoll.cli_audit_entries), listed after the ones above
audit_app.command("export")(export_cmd)
audit_app.command("show")(show_cmd)
audit_app.command("crosscheck")(crosscheck_cmd)
