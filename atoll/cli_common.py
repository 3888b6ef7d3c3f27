"""What every `atoll` sub-command shares: where errors go and how they end the command."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """An expected error: its message (never a traceback) and a non-zero exit."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)
