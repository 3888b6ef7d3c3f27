"""One column → a drafted feature (numeric, categorical or binary, with REVIEW comments for
every value derived from the data), or why the column is dropped instead."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from common.contract_draft.base import (
    _FALSE_WORDS,
    _TRUE_WORDS,
    MAX_CATEGORIES,
    MIN_ROWS_FOR_ID,
    MIN_VALUES_FOR_TRANSFORM,
    RARE_COUNT,
    REVIEW,
    SKEW_FOR_LOG1P,
    _Column,
    _stripped,
)
from common.contract_draft.render import _scalar
from common.encoding import OTHER, is_missing


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
