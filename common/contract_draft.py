"""Propose a data contract from a node owner's own file (`atoll contract draft`).

A draft is a *starting point* for the federation's agreement, never the agreement itself: every
value it derives from the data (exact minima and maxima, vocabularies, rare categories, centres,
scales, imputation values) reveals something about that data, so each one is marked with a
``# REVIEW`` comment in the YAML and listed in `Draft.review`. The owner rounds ranges outward,
folds rare categories into ``<other>``, replaces centres/scales/imputation values with agreed ones
and checks the dropped columns before the contract is shared with the other nodes.

Pure functions: a frame of text values in (as `client.data_source.read_records` returns it), a
`Draft` out. Types are inferred with the encoder's own parsing, so the drafted contract encodes the
file it was drafted from without rejecting any row for a drafted feature.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml

from common.contract import Contract, ContractError, parse_contract
from common.encoding import OTHER, is_missing

TASKS = ("churn", "propensity")
# A categorical column with more distinct values than this is dropped (identifier, free text, PII?).
MAX_CATEGORIES = 50
# A category seen in fewer rows than this is "rare": it may single out customers.
RARE_COUNT = 10
# Suggest log1p for a column with min >= 0 and at least this sample skewness (strong right skew).
SKEW_FOR_LOG1P = 1.0
# Whole numbers all distinct over at least this many rows look like an identifier: dropped.
MIN_ROWS_FOR_ID = 50
# Fewer numeric values than this: no transform is suggested (skewness means little).
MIN_VALUES_FOR_TRANSFORM = 20

REVIEW = "REVIEW"
REVIEW_WARNING = (
    "This draft is computed from your own data and reveals things about it: exact minima and "
    "maxima, category vocabularies (rare values included), centres/scales and imputation values. "
    f"Every such value is marked '# {REVIEW}'. Before sharing the contract with the other nodes: "
    "round numeric ranges outward, fold rare categories into <other> (remove them from the "
    "vocabulary), replace centres, scales and imputation values with values the federation "
    "agrees on, and check the dropped columns and the missing-value policies."
)

_LABEL_NAMES = ("churn", "churned", "label", "target", "y", "converted", "subscribed", "outcome")
_TRUE_WORDS = frozenset({"yes", "y", "true", "t"})
_FALSE_WORDS = frozenset({"no", "n", "false", "f"})
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
# Keys whose string values are keywords of the contract language: written unquoted.
_KEYWORD_KEYS = frozenset({"type", "missing", "task", "transform"})
_LINE_WIDTH = 99


class DraftError(ValueError):
    """The file cannot be drafted from as asked (unknown column, no label, ...)."""


@dataclass(frozen=True)
class Draft:
    contract: Contract
    yaml: str  # the contract as YAML, with REVIEW comments
    review: list[str]  # "column: what to review", one per marked value
    dropped: dict[str, str]  # column -> why it was put under `drop`


@dataclass
class _Column:
    """One drafted feature: its contract fields and a YAML comment per field."""

    fields: dict[str, Any]
    comments: dict[str, str] = field(default_factory=dict)  # field -> comment ("" = none)
    above: list[str] = field(default_factory=list)  # comment lines above the feature


def draft_contract(
    frame: pd.DataFrame,
    *,
    label: str | None = None,
    positive: str | None = None,
    id_column: str | None = None,
    task: str = "churn",
    name: str | None = None,
    source: str = "data",
) -> Draft:
    """Propose a contract for `frame` (every value as text); raise DraftError on bad options."""
    if task not in TASKS:
        raise DraftError(f"task '{task}' is not one of {', '.join(TASKS)}")
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        raise DraftError("the data repeats column names: rename the copies first")
    label = _pick_label(frame, label)
    positive = _pick_positive(frame[label], label, positive)
    id_column, id_note = _pick_id(frame, id_column, exclude=label)
    contract_name = _contract_name(name, source)

    review: list[str] = []
    dropped: dict[str, str] = {}
    features: list[tuple[str, _Column]] = []
    for col in columns:
        if col in (label, id_column):
            continue
        reason = _personal(col, frame[col])
        drafted = _draft_column(col, frame[col], review) if reason is None else reason
        if isinstance(drafted, str):
            dropped[col] = drafted
            review.append(f"{col}: dropped ({drafted})")
            continue
        features.append((col, drafted))
    if not features:
        raise DraftError("no column of the data can be a feature (all were dropped)")

    data: dict[str, Any] = {
        "name": contract_name,
        "version": 1,
        "task": task,
        "description": "DRAFT: say what is predicted, for whom and over which horizon.",
        "label": {"column": label, "positive": positive},
        "id": id_column,
        "drop": list(dropped),
        "features": [c.fields for _, c in features],
    }
    try:
        contract = parse_contract(data, source="(draft)")
    except ContractError as err:  # e.g. an invalid --name
        raise DraftError(str(err)) from None
    if id_note:
        review.append(f"{id_column}: {id_note}")
    text = _render(data, features, dropped, id_note, source)
    if parse_contract(yaml.safe_load(text), source="(draft yaml)") != contract:
        raise AssertionError("the drafted YAML does not parse back to the drafted contract")
    return Draft(contract=contract, yaml=text, review=review, dropped=dropped)


# ---- label, id, name ------------------------------------------------------------------------


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


# ---- one column -----------------------------------------------------------------------------


def _draft_column(col: str, series: pd.Series, review: list[str]) -> _Column | str:
    """A drafted feature, or why the column is dropped instead."""
    missing = is_missing(series).to_numpy()
    n_missing = int(missing.sum())
    if n_missing == len(series):
        return "no values in this file"
    raw = _stripped(series)[~missing]
    # The encoder's own parsing: a column is numeric only if it would reject none of its values.
    parsed = pd.to_numeric(series.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    parsed = parsed[~missing]
    if np.isfinite(parsed).all():
        distinct = set(np.unique(parsed).tolist())
        if distinct == {0.0, 1.0}:
            return _binary(col, raw, parsed == 1.0, n_missing, review)
        if len(distinct) == 1:
            return "a single value in this file: it carries no information"
        integral = bool((parsed == np.round(parsed)).all())
        if integral and len(distinct) == parsed.size >= MIN_ROWS_FOR_ID:
            return "every row has its own whole number: an identifier?"
        return _numeric(col, parsed, n_missing, review)
    lowered = np.char.lower(raw.astype(str))
    words = set(lowered.tolist())
    if words <= (_TRUE_WORDS | {"1"}) | (_FALSE_WORDS | {"0"}) and len(words) >= 2:
        is_true = np.isin(lowered, list(_TRUE_WORDS | {"1"}))
        if is_true.any() and (~is_true).any():
            return _binary(col, raw, is_true, n_missing, review)
    counts = pd.Series(raw).value_counts()
    if len(counts) == 1:
        return "a single value in this file: it carries no information"
    if len(counts) > MAX_CATEGORIES:
        return (
            f"more than {MAX_CATEGORIES} distinct text values: an identifier, free text or "
            "personal data?"
        )
    return _categorical(col, counts, n_missing, review)


def _numeric(col: str, values: np.ndarray, n_missing: int, review: list[str]) -> _Column:
    lo, hi = float(values.min()), float(values.max())
    out = _Column({"name": col, "type": "numeric", "min": _num(lo), "max": _num(hi)})
    nice_lo, nice_hi = _round_outward(lo, hi)
    out.comments["min"] = f"{REVIEW}: exact minimum of this file; round outward (e.g. {nice_lo:g})"
    out.comments["max"] = f"{REVIEW}: exact maximum of this file; round outward (e.g. {nice_hi:g})"
    review += [f"{col}.min: exact data minimum", f"{col}.max: exact data maximum"]
    skew = _skewness(values)
    if values.size >= MIN_VALUES_FOR_TRANSFORM and skew >= SKEW_FOR_LOG1P:
        if lo >= 0:
            logged = np.log1p(values)
            centre, scale = _sig(float(logged.mean())), _sig(float(logged.std()))
            if abs(_skewness(logged)) < skew and scale > 0:
                out.fields.update(transform="log1p", center=centre, scale=scale)
                out.comments["transform"] = (
                    "suggested: strongly right-skewed; log1p spreads the mass near the minimum"
                )
                out.comments["center"] = f"{REVIEW}: mean of log1p(value) in this file"
                out.comments["scale"] = f"{REVIEW}: standard deviation of log1p(value) in this file"
                review += [f"{col}.center: data mean (log1p)", f"{col}.scale: data std (log1p)"]
        else:
            out.above.append(
                "note: strongly right-skewed here, but log1p needs min > -1; consider clipping a "
                "thin tail (a lower max) or agreeing center/scale"
            )
    if n_missing:
        impute = min(max(_sig(float(np.median(values))), lo), hi)
        out.fields.update(missing="impute", impute=_num(impute))
        out.comments["missing"] = "this file has missing values"
        out.comments["impute"] = f"{REVIEW}: median of this file; agree a value"
        review.append(f"{col}.impute: data median")
    else:
        out.fields["missing"] = "reject"
        out.comments["missing"] = "none missing here; 'impute' if other nodes have gaps"
    return out


def _categorical(col: str, counts: pd.Series, n_missing: int, review: list[str]) -> _Column:
    vocabulary = sorted(str(v) for v in counts.index)
    out = _Column({"name": col, "type": "categorical", "vocabulary": vocabulary})
    out.comments["vocabulary"] = f"{REVIEW}: the values seen in this file"
    review.append(f"{col}.vocabulary: values seen in the data")
    rare = sorted(str(v) for v, n in counts.items() if n < RARE_COUNT)
    if rare:
        shown = ", ".join(_scalar(v) for v in rare)
        out.above.append(
            f"{REVIEW}: rare here (fewer than {RARE_COUNT} rows): {shown} — fold into {OTHER} "
            "(remove from the vocabulary) before sharing"
        )
        review.append(f"{col}.vocabulary: {len(rare)} rare categories")
    out.fields["missing"] = "other"
    out.comments["missing"] = f"missing values go to the {OTHER} bucket" if n_missing else ""
    return out


def _binary(
    col: str, raw: np.ndarray, is_true: np.ndarray, n_missing: int, review: list[str]
) -> _Column:
    true_values = sorted(set(raw[is_true].tolist()))
    false_values = sorted(set(raw[~is_true].tolist()))
    out = _Column(
        {"name": col, "type": "binary", "true_values": true_values, "false_values": false_values}
    )
    if n_missing:
        majority = bool(is_true.sum() * 2 >= is_true.size)
        out.fields.update(missing="impute", impute=majority)
        out.comments["missing"] = "this file has missing values"
        out.comments["impute"] = f"{REVIEW}: the more frequent value in this file; agree a value"
        review.append(f"{col}.impute: data majority")
    else:
        out.fields["missing"] = "reject"
    return out


# ---- numbers --------------------------------------------------------------------------------


def _skewness(values: np.ndarray) -> float:
    d = values - values.mean()
    m2 = float((d**2).mean())
    return float((d**3).mean()) / m2**1.5 if m2 > 0 else 0.0


def _sig(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits (less precision, less revealed)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _round_outward(lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] widened to multiples of a step one decade below the span (8684.8 -> 8700)."""
    step = 10.0 ** (math.floor(math.log10(hi - lo)) - 1)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _stripped(col: pd.Series) -> np.ndarray:
    return col.astype("string").str.strip().fillna("").to_numpy(dtype=object)


def _listed(values: Any, limit: int = 30) -> str:
    items = [str(v) for v in values]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ---- YAML -----------------------------------------------------------------------------------


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
