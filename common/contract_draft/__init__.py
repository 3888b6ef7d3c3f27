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

Modules: `base` (the REVIEW marker, thresholds, the error and the drafted feature they share) →
`roles` (which column is the label, its positive value, the id; columns dropped as personal
data; the contract's name) → `columns` (one column → a numeric, categorical or binary feature,
or why it is dropped) → `render` (the contract as YAML with its REVIEW comments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from common.contract import Contract, ContractError, parse_contract
from common.contract_draft.base import REVIEW as REVIEW
from common.contract_draft.base import REVIEW_WARNING as REVIEW_WARNING
from common.contract_draft.base import DraftError as DraftError
from common.contract_draft.base import _Column
from common.contract_draft.columns import _draft_column
from common.contract_draft.render import _render
from common.contract_draft.roles import (
    _contract_name,
    _personal,
    _pick_id,
    _pick_label,
    _pick_positive,
)

TASKS = ("churn", "propensity")


@dataclass(frozen=True)
class Draft:
    contract: Contract
    yaml: str  # the contract as YAML, with REVIEW comments
    review: list[str]  # "column: what to review", one per marked value
    dropped: dict[str, str]  # column -> why it was put under `drop`


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
