"""What every `atoll` sub-command shares: where errors go and how they end the command."""

from __future__ import annotations

from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from common.errors import AtollError

console = Console(stderr=True)
DEBUG = "atoll.debug"  # ctx.meta key: `atoll --debug` shows tracebacks of expected errors


def fail(message: str, code: int = 2) -> NoReturn:
    """An expected error: its message (never a traceback) and a non-zero exit."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


class AtollGroup(TyperGroup):
    """The root `atoll` command: an expected error (`common.errors.AtollError`) that any
    sub-command lets escape ends in its message and exit 1, like `fail`; `atoll --debug …`
    raises it instead (traceback). Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AtollError as err:
            if ctx.meta.get(DEBUG):
                raise
            fail(str(err), code=1)
