"""`atoll apikey`: create, list, rotate and revoke the scoring API's keys.

Keys live in the coordinator database the API serves from (`--registry`, same URL as
`atoll serve`). A key's secret is printed once, on stdout alone (so `KEY=$(atoll apikey create
...)` works); everything else goes to stderr. Only a salted hash is stored.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from atoll.cli_common import fail
from atoll.cli_options import DEFAULTS
from server.api.audit_trail import key_change_recorder
from server.api.auth import ROLE_PERMISSIONS, ApiKeyError, ApiKeyInfo, ApiKeyStore, Role

keys_app = typer.Typer(
    help="API keys for the scoring API (roles: app, analyst, governance, admin).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
_err = Console(stderr=True)

RegistryOpt = Annotated[
    str,
    typer.Option(
        "--registry",
        help="Coordinator database URL (the one `atoll serve --registry` uses)",
        envvar="ATOLL_REGISTRY_URL",
    ),
]


def _open(registry: str) -> ApiKeyStore:
    try:
        return ApiKeyStore.open(registry, on_event=key_change_recorder(registry))
    except (ApiKeyError, ValueError) as exc:
        fail(str(exc))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _show_secret(info: ApiKeyInfo, key: str, verb: str) -> None:
    _err.print(
        f"{verb} API key [bold]{info.key_id}[/] ({info.name}, role {info.role}). "
        "The key below is shown only now: store it in your secret manager."
    )
    typer.echo(key)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what uses the key, e.g. crm-scoring")],
    role: Annotated[Role, typer.Option(help="app | analyst | governance | admin")],
    registry: RegistryOpt = DEFAULTS.registry_url,
) -> None:
    """Create a key; prints the key once (stdout)."""
    with _open(registry) as store:
        try:
            info, key = store.create(name, role)
        except ApiKeyError as exc:
            fail(str(exc))
    _show_secret(info, key, "created")


@keys_app.command("list")
def list_keys(
    registry: RegistryOpt = DEFAULTS.registry_url,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Every key with its role and status (never secrets)."""
    with _open(registry) as store:
        keys = store.list_keys()
    if as_json:
        rows = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "role": k.role,
                "active": k.active,
                "created_at": k.created_at.isoformat(),
                "rotated_at": k.rotated_at.isoformat() if k.rotated_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("key id", "name", "role", "status", "created (UTC)", "rotated", "revoked")
    for k in keys:
        status = "[green]active[/]" if k.active else "[red]revoked[/]"
        table.add_row(
            k.key_id,
            k.name,
            k.role,
            status,
            _when(k.created_at),
            _when(k.rotated_at),
            _when(k.revoked_at),
        )
    Console().print(table)


@keys_app.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="Key id from `atoll apikey list`")],
    registry: RegistryOpt = DEFAULTS.registry_url,
) -> None:
    """Replace a key's secret (same id and role); the old secret stops working at once."""
    with _open(registry) as store:
        try:
            info, key = store.rotate(key_id)
        except ApiKeyError as exc:
            fail(str(exc))
    _show_secret(info, key, "rotated")


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Key id from `atoll apikey list`")],
    registry: RegistryOpt = DEFAULTS.registry_url,
) -> None:
    """Disable a key for good; requests with it get 401 from now on."""
    with _open(registry) as store:
        try:
            info = store.revoke(key_id)
        except ApiKeyError as exc:
            fail(str(exc))
    _err.print(f"revoked API key [bold]{info.key_id}[/] ({info.name}, role {info.role})")


@keys_app.command("roles")
def roles() -> None:
    """What each role may do."""
    table = Table("role", "permissions")
    for role, perms in ROLE_PERMISSIONS.items():
        table.add_row(role.value, ", ".join(sorted(p.value for p in perms)))
    Console().print(table)
