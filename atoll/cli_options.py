"""Options the coordinator-side commands share: their types and help text, and their defaults.

`DEFAULTS` is the single-host layout every command assumes unless told otherwise: the SuperLink on
loopback, certificates from `atoll certs create` in deploy/certs, the coordinator's state under
runs/. A command writes `superlink: SuperLinkAddr = DEFAULTS.superlink`, never the literal again,
so moving a default (a port, a directory) is one edit here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict

from atoll.pki import TlsFiles


class CliDefaults(BaseModel):
    """Where a single-host federation's coordinator listens and keeps its files."""

    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    superlink_port: int = 9093
    app_store_port: int = 9095
    certs_dir: Path = Path("deploy/certs")
    flwr_home: Path = Path("runs/coordinator-flwr")
    contracts_dir: Path = Path("runs/contracts")
    app_store_dir: Path = Path("runs/app-store")
    registry_url: str = "sqlite:///runs/registry.db"

    @property
    def superlink(self) -> str:
        """The SuperLink's address as nodes and the flwr CLI dial it."""
        return f"{self.host}:{self.superlink_port}"

    @property
    def ca(self) -> Path:
        """The coordinator's CA certificate (`atoll certs create`)."""
        return TlsFiles.within(self.certs_dir).ca_cert

    @property
    def server_cert(self) -> Path:
        """The SuperLink's and app store's TLS certificate (`atoll certs create`)."""
        return TlsFiles.within(self.certs_dir).server_cert

    @property
    def server_key(self) -> Path:
        """Its private key."""
        return TlsFiles.within(self.certs_dir).server_key

    @property
    def app_store_url(self) -> str:
        """Where `atoll app-store serve` answers the SuperLink."""
        return f"https://{self.host}:{self.app_store_port}"


DEFAULTS = CliDefaults()

SuperLinkAddr = Annotated[str, typer.Option(help="SuperLink address host:port")]
CaCert = Annotated[Path, typer.Option(help="CA certificate of the coordinator")]
CoordinatorHome = Annotated[Path, typer.Option(help="Coordinator's flwr CLI home")]
AppStoreDir = Annotated[Path, typer.Option(help="Directory `atoll app-store serve` serves")]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option(help="App-signing key (`atoll keys app-signing`): submit a signed build"),
]
MinNodes = Annotated[int | None, typer.Option(help="Wait for this many nodes")]
