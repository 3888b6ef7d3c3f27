"""Small file helpers shared by the CLI, the node runtime and the coordinator."""

from __future__ import annotations

import os
from pathlib import Path


def toml_value(v: str | int | float | bool) -> str:
    """One TOML value: booleans and numbers as literals, everything else a quoted string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path`, mode 0600 from the first byte (and if the file already existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return path
