"""The drafted contract as YAML: every value on one line with its REVIEW comment, strings
always quoted, and the warning on top."""

from __future__ import annotations

import re
from typing import Any

import yaml

from common.contract_draft.base import REVIEW, REVIEW_WARNING, _Column

# Keys whose string values are keywords of the contract language: written unquoted.
_KEYWORD_KEYS = frozenset({"type", "missing", "task", "transform"})
_LINE_WIDTH = 99
_NO_WRAP = 1 << 30


def _scalar(value: Any) -> str:
    """One YAML scalar: strings always double-quoted (no Yes/No/1 surprises), numbers plain."""
    if isinstance(value, str):
        text = yaml.safe_dump(value, default_style='"', width=_NO_WRAP, allow_unicode=True)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=_NO_WRAP)
    return text.removesuffix("\n...\n").strip()


def _flow(values: list[Any]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def _line(indent: str, key: str, value: Any, comment: str = "") -> str:
    """`key: value  # comment`; the comment goes on a line of its own above if that is long."""
    if isinstance(value, list):
        body = _flow(value)
    elif key in _KEYWORD_KEYS and isinstance(value, str) and re.fullmatch(r"[a-z0-9]+", value):
        body = value
    else:
        body = _scalar(value)
    text = f"{indent}{key}: {body}"
    if not comment:
        return text
    if len(text) + 4 + len(comment) <= _LINE_WIDTH:
        return f"{text}  # {comment}"
    return "\n".join([*_wrap(comment, " " * len(indent) + "# "), text])


def _render(
    data: dict[str, Any],
    features: list[tuple[str, _Column]],
    dropped: dict[str, str],
    id_note: str,
    source: str,
) -> str:
    warning = _wrap(REVIEW_WARNING, "# ")
    out = [
        f"# DRAFT data contract proposed by `atoll contract draft` from {_basename(source)}.",
        "#",
        *warning,
        "#",
        "# Numeric features: clip to [min, max] (counted) -> optional transform (log1p) -> scale:",
        "# (t - center) / scale when center and scale are given (in the transformed space), else",
        "# min-max to [0, 1]. Missing policies: numeric/binary reject|impute, categorical",
        "# reject|other.",
        _line("", "name", data["name"]),
        _line("", "version", data["version"]),
        _line("", "task", data["task"]),
        _line("", "description", data["description"]),
        "label:",
        _line("  ", "column", data["label"]["column"]),
        _line("  ", "positive", data["label"]["positive"]),
        "# Customer id: used for the deterministic train/test split, never a feature.",
        _line("", "id", data["id"], f"{REVIEW}: {id_note}" if id_note else ""),
    ]
    if dropped:
        out.append("drop:  # columns never read")
        out += [f"  - {_scalar(c)}  # {REVIEW}: {why}" for c, why in dropped.items()]
    else:
        out.append("drop: []  # list PII and leaky columns (known only after the outcome)")
    out.append("features:")
    for _, col in features:
        for line in col.above:
            out += _wrap(line, "  # ")
        first = True
        for key, value in col.fields.items():
            indent = "  - " if first else "    "
            out.append(_line(indent, key, value, col.comments.get(key, "")))
            first = False
    return "\n".join(out) + "\n"


def _wrap(text: str, prefix: str, width: int = _LINE_WIDTH) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(prefix) + len(current) + 1 + len(word) > width:
            lines.append(prefix + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, prefix + current] if current else lines


def _basename(source: str) -> str:
    """The file's name only: its directory may say more than the contract should."""
    return re.sub(r"\s+", " ", source.replace("\\", "/").rsplit("/", 1)[-1])
