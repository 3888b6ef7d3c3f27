"""What the `atoll audit` commands share: their consoles, the --db and --log options, and how an
audit error ends a command (its message, exit code 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from atoll.cli_common import fail
from privacy.audit import AuditError

console = Console(stderr=True)
stdout = Console()

DbOption = Annotated[
    str,
    typer.Option("--db", help="Audit database URL (sqlite:///file.db or postgresql+psycopg://)"),
]
LogOption = Annotated[str, typer.Option("--log", help="Log id, e.g. coordinator or node:marketing")]


@contextmanager
def audit_errors() -> Iterator[None]:
    """Turn audit errors (which already say what to do) into exit code 2."""
    try:
        yield
    except AuditError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")
