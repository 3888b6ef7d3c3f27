"""`atoll certs` and `atoll keys`: TLS certificates, node keys and the app-signing key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atoll import pki
from atoll.cli_common import console
from atoll.cli_options import DEFAULTS

certs_app = typer.Typer(help="TLS certificates for the coordinator.", no_args_is_help=True)
keys_app = typer.Typer(help="Node authentication keys.", no_args_is_help=True)


@certs_app.command("create")
def certs_create(
    out: Annotated[
        Path, typer.Option(help="Directory for ca.crt, server.crt, server.key")
    ] = DEFAULTS.certs_dir,
    host: Annotated[list[str] | None, typer.Option(help="Names/IPs nodes dial (repeat)")] = None,
    days: int = 365,
) -> None:
    """Create a CA and a server certificate covering every address nodes dial."""
    files = pki.create_tls(out, tuple(host or pki.DEFAULT_HOSTS), days)
    console.print(
        f"CA {files.ca_cert}\ncertificate {files.server_cert}\nkey {files.server_key} (mode 600)",
        soft_wrap=True,
    )


@keys_app.command("node")
def keys_node(
    name: Annotated[str, typer.Argument(help="Node name, e.g. marketing")],
    out: Annotated[Path, typer.Option(help="Directory for NAME and NAME.pub")] = Path(
        "deploy/keys"
    ),
) -> None:
    """Create a node's ECDSA P-384 key pair (OpenSSH format) for SuperNode authentication."""
    private, public = pki.create_node_key(out, name)
    console.print(
        f"private key {private} (mode 600) — keep it on the node\n"
        f"public key {public} — give it to the coordinator",
        soft_wrap=True,
    )


@keys_app.command("app-signing")
def keys_app_signing(
    out: Annotated[
        Path, typer.Option(help="Directory for app-signing and trusted-entities.yaml")
    ] = Path("deploy/keys/app-signing"),
) -> None:
    """Create the coordinator's Ed25519 app-signing key and the trusted-entities file for nodes."""
    files = pki.create_app_signing_key(out)
    console.print(
        f"private key {files.private_key} (mode 600) — keep it on the coordinator\n"
        f"trusted entities {files.trusted_entities} — give it to every node owner "
        "(`atoll node start --trusted-entities`)",
        soft_wrap=True,
    )
