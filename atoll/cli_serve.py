"""`atoll serve`: the scoring API (registered on the main app by atoll.cli)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from atoll.cli_common import console, fail
from atoll.cli_options import DEFAULTS


def serve(
    registry: Annotated[str, typer.Option(help="Registry SQLAlchemy URL")] = DEFAULTS.registry_url,
    host: str = "127.0.0.1",
    port: int = 8080,
    certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS (with --keyfile)")
    ] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            help="Allow plain HTTP on a non-loopback address (API keys would cross the network "
            "in clear text)",
        ),
    ] = False,
    audit_key: Annotated[
        Path | None,
        typer.Option(
            help="The API's Ed25519 audit key (created only on first start, while the api log is "
            "empty; default beside a SQLite registry)"
        ),
    ] = None,
    audit_public_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Pinned public keys of the coordinator's and nodes' logs for GET /audit/verify "
            "(e.g. coordinator.pub; repeat)"
        ),
    ] = None,
    api_audit_public_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Pinned public keys of the api log (repeat for rotated keys); the API's own "
            "key must be one of them"
        ),
    ] = None,
    admin_audit_public_key: Annotated[
        list[Path] | None,
        typer.Option(help="Pinned public keys of the admin (operator) log (repeat)"),
    ] = None,
    registry_public_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Pinned public key of the coordinator's publishing key (publishing.pub; repeat "
            "while rotating): a model is served only if its registry row verifies. Required"
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory (off-host: a mounted share) for signed checkpoints of the api and "
            "admin logs; GET /audit/verify uses the newest"
        ),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Checkpoint a log after this many new entries")
    ] = 1000,
    checkpoint_minutes: Annotated[
        float, typer.Option(min=0.01, help="... or this many minutes after the last checkpoint")
    ] = 10.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API worker processes; more than 1 needs --rate-limit-url (the per-key rate "
            "limit must be shared, or each worker would allow the full rate)",
        ),
    ] = 1,
    rate_limit_url: Annotated[
        str | None,
        typer.Option(
            help="Redis URL for per-key rate limits shared by all workers, e.g. "
            "redis://127.0.0.1:6379/0 (default: in process)"
        ),
    ] = None,
    rate_per_second: Annotated[
        float, typer.Option(min=0.001, help="Requests per second per API key")
    ] = 20.0,
    rate_burst: Annotated[int, typer.Option(min=1, help="Burst per API key")] = 40,
) -> None:
    """Serve the scoring API; every route but /health needs an API key (`atoll apikey`)."""
    import ipaddress

    import uvicorn

    from privacy.audit import AuditError
    from server.api.app import create_app, dispose

    if (certfile is None) != (keyfile is None):
        fail("give both --certfile and --keyfile to serve HTTPS, or neither for plain HTTP")
    for path in (certfile, keyfile):
        if path is not None and not path.is_file():
            fail(f"TLS file {path} not found; `atoll certs create` makes server.crt/server.key")
    if certfile is None and not insecure_http:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            fail(
                f"refusing plain HTTP on {host}: API keys and scored records would cross the "
                "network unencrypted; pass --certfile and --keyfile (`atoll certs create`), bind "
                "127.0.0.1 behind a TLS proxy, or add --insecure-http if you really mean it"
            )
    if workers > 1 and rate_limit_url is None:
        fail(
            f"--workers {workers} needs --rate-limit-url redis://HOST:6379/0: each worker is its "
            "own process, and without a shared store every one of them would allow each key the "
            "full rate"
        )
    try:
        api = create_app(
            registry,
            audit_key=audit_key,
            audit_public_keys=audit_public_key,
            api_public_keys=api_audit_public_key,
            admin_public_keys=admin_audit_public_key,
            registry_public_keys=registry_public_key or [],
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_entries=checkpoint_every,
            checkpoint_every_minutes=checkpoint_minutes,
            rate_limit_url=rate_limit_url,
            rate_per_second=rate_per_second,
            rate_burst=rate_burst,
        )
    except (AuditError, ValueError) as exc:
        fail(str(exc))
    if not api_audit_public_key:
        console.print(
            "[yellow]warning:[/] no --api-audit-public-key: GET /audit/verify?log=api has no "
            "pinned key to verify the API's own log with"
        )
    tls: dict[str, Any] = {
        "ssl_certfile": str(certfile) if certfile else None,
        "ssl_keyfile": str(keyfile) if keyfile else None,
    }
    if workers == 1:
        uvicorn.run(api, host=host, port=port, log_level="warning", **tls)
        return
    # Several processes: each worker builds the same app from the same settings (checked above,
    # signing key created if this is the first start), passed as ATOLL_* variables.
    os.environ.update(api.state.settings.to_env())
    dispose(api)
    uvicorn.run(
        "server.api.app:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        **tls,
    )
