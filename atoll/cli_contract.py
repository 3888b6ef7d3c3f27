"""`atoll contract`: check a data contract and data against it; draft one from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from atoll.cli_common import console, fail

contract_app = typer.Typer(help="Check data contracts and data against them.", no_args_is_help=True)


@contract_app.command("check")
def contract_check(
    contract: Annotated[Path, typer.Argument(help="Contract YAML")],
    data: Annotated[
        str | None, typer.Option(help="Optional data to validate (counts only are shown)")
    ] = None,
) -> None:
    """Validate a contract, and optionally a data set against it (prints the quality report)."""
    from client.data_source import read_records
    from client.validation import validate
    from common.contract import ContractError, load_contract

    try:
        c = load_contract(contract)
    except ContractError as err:
        fail(str(err))
    console.print(
        f"contract {c.name} v{c.version} ({c.task}), {len(c.features)} features, hash {c.hash}"
    )
    if data:
        report = validate(read_records(data), c).report
        typer.echo(report.model_dump_json(indent=2))


@contract_app.command("draft")
def contract_draft(
    data: Annotated[Path, typer.Option(help="Your own data file (CSV/Parquet) to draft from")],
    label: Annotated[
        str | None, typer.Option(help="Label column (default: a column named churn, y, ...)")
    ] = None,
    positive: Annotated[
        str | None, typer.Option(help="The label's positive value (default: Yes/1/true/...)")
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option("--id", help="Customer id column (default: a unique column named ...id)"),
    ] = None,
    task: Annotated[str, typer.Option(help="churn or propensity")] = "churn",
    name: Annotated[str | None, typer.Option(help="Contract name (default: from the file)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the draft here (default: standard output)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file")] = False,
) -> None:
    """Propose a contract from your own file; every data-derived value is marked for REVIEW."""
    from client.data_source import DataSourceError, read_records
    from common.contract_draft import REVIEW_WARNING, DraftError, draft_contract

    if not data.is_file():
        fail(escape(f"data file '{data}' not found (or not a file)"))
    if out is not None and out.exists() and not force:
        fail(escape(f"'{out}' exists: choose another --out, or --force to overwrite it"))
    try:
        draft = draft_contract(
            read_records(data),
            label=label,
            positive=positive,
            id_column=id_column,
            task=task,
            name=name,
            source=data.name,
        )
    except (DataSourceError, DraftError) as err:
        fail(escape(str(err)))
    if out is None:
        typer.echo(draft.yaml, nl=False)
    else:
        out.write_text(draft.yaml, encoding="utf-8")
        console.print(f"draft contract written to {escape(str(out))}")
    console.print(f"[bold yellow]REVIEW before sharing:[/] {escape(REVIEW_WARNING)}")
    console.print(
        f"{len(draft.review)} item(s) marked '# REVIEW' in the draft"
        + (f"; dropped: {escape(', '.join(draft.dropped))}" if draft.dropped else "")
    )
