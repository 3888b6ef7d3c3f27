"""Run-config options of the CLI: unset means "the app's default" (common/run_config.py)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from atoll.cli_common import fail
from common.run_config import RunConfig


# An option that sets a run-config key defaults to None, "the app's default": the CLI leaves it out
# of the run config and the app's own default applies (common/run_config.py, the one place each
# default is written). The help still shows that default.
def _app_default(field: str, help: str = "") -> Any:
    """A typer option for RunConfig field `field`, unset by default."""
    shown = escape(f"[default: the app's, {RunConfig.model_fields[field].default}]")  # not markup
    return typer.Option(help=f"{help} {shown}" if help else shown, show_default=False)


def build_run_config(options: dict[str, Any], sets: list[str] | None = None) -> dict[str, Any]:
    """The run config the CLI submits: `options` by RunConfig field name, only those given (None:
    not given, the app's default applies), then each `--set KEY=VALUE` (KEY a run-config key)."""
    config = {RunConfig.key(name): value for name, value in options.items() if value is not None}
    keys = RunConfig.defaults()
    for item in sets or []:
        key, _, value = item.partition("=")
        if key not in keys:
            fail(f"--set {item}: '{key}' is not a run-config key ({', '.join(keys)})")
        config[key] = _parse_value(value)
    return config


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
