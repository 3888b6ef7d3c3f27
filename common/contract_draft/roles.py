"""Which column plays which role: the label and its positive value, the id, the columns dropped
as personal data; and the contract's name."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from common.contract_draft.base import _TRUE_WORDS, MAX_CATEGORIES, DraftError, _stripped
from common.contract_draft.render import _basename
from common.encoding import is_missing

_LABEL_NAMES = ("churn", "churned", "label", "target", "y", "converted", "subscribed", "outcome")
# Column-name tokens of protected attributes: such columns are dropped, for the owners to review.
_PROTECTED_TOKENS = frozenset(
    {"gender", "sex", "race", "ethnicity", "ethnic", "religion", "nationality"}
)
# Column-name tokens of direct identifiers: dropped when the column has many distinct values.
_IDENTIFIER_TOKENS = frozenset(
    {
        "email", "mail", "phone", "mobile", "telephone", "address", "street", "ssn", "passport",
        "iban", "birth", "birthday", "dob", "name", "firstname", "lastname", "fullname", "surname",
        "ip", "zip", "postcode",
    }
)  # fmt: skip


def _pick_label(frame: pd.DataFrame, label: str | None) -> str:
    if label is not None:
        if label not in frame.columns:
            raise DraftError(
                f"label column '{label}' is not in the data; columns: {_listed(frame.columns)}"
            )
        return label
    by_lower = {str(c).lower(): str(c) for c in frame.columns}
    for guess in _LABEL_NAMES:
        if guess in by_lower:
            return by_lower[guess]
    raise DraftError(
        "no --label given and no column looks like a label "
        f"({', '.join(_LABEL_NAMES)}): name it with --label COL"
    )


def _pick_positive(col: pd.Series, label: str, positive: str | None) -> str:
    values = sorted(set(_stripped(col)[~is_missing(col).to_numpy()].tolist()))
    if not values:
        raise DraftError(f"label column '{label}' has no values")
    if positive is not None:
        if positive not in values:
            raise DraftError(
                f"positive value '{positive}' does not occur in label column '{label}'"
                + (f" (values: {_listed(values)})" if len(values) <= 10 else "")
            )
        return positive
    truthy = [v for v in values if v.lower() in _TRUE_WORDS | {"1"}]
    if len(values) == 2 and len(truthy) == 1:
        return truthy[0]
    raise DraftError(
        f"cannot tell the positive value of label column '{label}'"
        + (f" (values: {_listed(values)})" if len(values) <= 10 else "")
        + ": give it with --positive VALUE"
    )


def _pick_id(frame: pd.DataFrame, id_column: str | None, exclude: str) -> tuple[str, str]:
    """The id column and a review note ("" if the column is in the data and unique)."""
    if id_column is not None:
        if id_column not in frame.columns:
            raise DraftError(
                f"id column '{id_column}' is not in the data; columns: {_listed(frame.columns)}"
            )
        if id_column == exclude:
            raise DraftError(f"column '{id_column}' cannot be both the label and the id")
        return id_column, ""
    for col in frame.columns:
        col = str(col)
        if col == exclude or not _looks_like_id(col):
            continue
        values = _stripped(frame[col])
        if (values != "").all() and len(set(values.tolist())) == len(values):
            return col, ""
    fallback = next(c for c in ("customer_id", "row_id", "atoll_row_id") if c not in frame.columns)
    return fallback, (
        "the data has no unique id column: export a stable customer id under this name, or set "
        "id-from-row = true in the node config (row numbers as ids)"
    )


def _looks_like_id(col: str) -> bool:
    tokens = _tokens(col)
    return bool(tokens) and (
        tokens[-1] in {"id", "key", "uuid", "guid"} or tokens[-1].endswith("id")
    )


def _contract_name(name: str | None, source: str) -> str:
    if name is not None:
        return name  # validated with the contract: the error names the pattern
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", _basename(source))
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return slug or "drafted-contract"


def _personal(col: str, series: pd.Series) -> str | None:
    tokens = set(_tokens(col))
    if tokens & _PROTECTED_TOKENS:
        return "its name suggests a protected attribute: move it to features only by agreement"
    if tokens & _IDENTIFIER_TOKENS and series.nunique(dropna=True) > MAX_CATEGORIES:
        return "its name and its many distinct values suggest personal data"
    return None


def _tokens(col: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", col)  # camelCase -> camel Case
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def _listed(values: Any, limit: int = 30) -> str:
    items = [str(v) for v in values]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
