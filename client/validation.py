"""Check a node's records against the data contract and encode them; report quality as counts.

Order: the schema first (a missing column stops everything, naming the column), then `drop`
columns are discarded unread, then every row is checked (id, label, each feature through the
contract's encoder). Bad rows are rejected and *counted* by reason; the QualityReport holds only
counts, rates, column names and reasons — never a value or an id — so it may leave the node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from common.contract import Contract
from common.encoding import Encoder, EncodingStats
from common.errors import AtollError

Reject = Callable[[np.ndarray, str], None]

REJECT_ID_MISSING = "id:missing"
REJECT_ID_DUPLICATE = "id:duplicate"
REJECT_LABEL_MISSING = "label:missing"
# A value equal to the positive one except for letter case ("yes" for "Yes"): most likely a
# positive exported differently, so it is rejected rather than silently counted as negative.
REJECT_LABEL_CASE = "label:case_mismatch"


class SchemaMismatchError(AtollError, ValueError):
    """The data lacks columns the contract requires (or repeats column names)."""


class NoUsableRowsError(AtollError, ValueError):
    """Every row was rejected; `report` still says why, as counts."""

    def __init__(self, message: str, report: QualityReport) -> None:
        super().__init__(message)
        self.report = report


class QualityReport(BaseModel):
    """Data-quality counts of one validation run: safe to leave the node."""

    contract_name: str
    contract_hash: str
    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    # reason ("feature:reason", "id:missing", ...) -> rows; a row can count under several reasons.
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    values_clipped: dict[str, int] = Field(default_factory=dict)  # feature -> values clipped
    unknown_categories: dict[str, int] = Field(default_factory=dict)  # feature -> to "other"
    missing_rate: dict[str, float] = Field(default_factory=dict)  # feature -> share of rows read
    duplicate_ids: int = 0  # rows dropped because an earlier row had the same id
    extra_columns: int = 0  # columns present but not in the contract (ignored)
    positives: int = 0  # accepted rows with the positive label
    label_values: int = 0  # distinct non-missing label values seen
    warnings: list[str] = Field(default_factory=list)

    def to_metrics(self) -> dict[str, float]:
        """Flat numbers for a Flower MetricRecord, e.g. `dq.rejected.TotalCharges:missing`."""
        out: dict[str, float] = {
            "dq.rows-read": float(self.rows_read),
            "dq.rows-accepted": float(self.rows_accepted),
            "dq.rows-rejected": float(self.rows_rejected),
            "dq.duplicate-ids": float(self.duplicate_ids),
            "dq.extra-columns": float(self.extra_columns),
            "dq.positives": float(self.positives),
            "dq.label-values": float(self.label_values),
            "dq.warnings": float(len(self.warnings)),
        }
        groups: dict[str, dict[str, int] | dict[str, float]] = {
            "dq.rejected.": self.rejected_by_reason,
            "dq.clipped.": self.values_clipped,
            "dq.unknown.": self.unknown_categories,
            "dq.missing-rate.": self.missing_rate,
        }
        for prefix, counts in groups.items():
            out.update({prefix + k: float(v) for k, v in sorted(counts.items()) if v})
        return out


@dataclass
class ValidatedData:
    x: np.ndarray  # float32 [n_accepted, n_encoded_columns]
    y: np.ndarray | None  # float32 [n_accepted] (1.0 = positive), None without labels
    ids: np.ndarray  # object (str) [n_accepted]
    rows: np.ndarray  # int64 [n_accepted]: positions of the accepted rows in the input frame
    report: QualityReport


def validate(
    frame: pd.DataFrame,
    contract: Contract,
    *,
    require_label: bool = True,
    strict_categories: bool = False,
) -> ValidatedData:
    """Schema-check, clean and encode `frame` for `contract`; raise if nothing usable remains."""
    _check_schema(frame, contract, require_label)
    frame = frame.drop(columns=[c for c in contract.drop if c in frame.columns])
    known = set(contract.required_columns)
    report = QualityReport(
        contract_name=contract.name,
        contract_hash=contract.hash,
        rows_read=len(frame),
        extra_columns=sum(1 for c in frame.columns if c not in known),
    )
    reasons: Counter[str] = Counter()
    ok = np.ones(len(frame), dtype=bool)

    def reject(mask: np.ndarray, reason: str) -> None:
        if mask.any():
            reasons[reason] += int(mask.sum())
            ok[mask] = False

    ids = _text(frame[contract.id])
    reject(ids == "", REJECT_ID_MISSING)
    duplicate = pd.Series(ids).duplicated(keep="first").to_numpy() & (ids != "")
    report.duplicate_ids = int(duplicate.sum())
    reject(duplicate, REJECT_ID_DUPLICATE)

    positive = None
    if require_label:
        positive = _check_labels(_text(frame[contract.label.column]), contract, report, reject)

    encoded = Encoder(contract, strict_categories=strict_categories).encode(frame)
    reasons.update(encoded.stats.rejected)
    ok &= encoded.keep
    _fill_feature_stats(report, contract, encoded.stats)

    report.rejected_by_reason = dict(sorted(reasons.items()))
    report.rows_accepted = int(ok.sum())
    report.rows_rejected = report.rows_read - report.rows_accepted
    y = None if positive is None else positive[ok].astype(np.float32)
    report.positives = 0 if y is None else int(y.sum())
    if report.rows_accepted == 0:
        raise NoUsableRowsError(_no_rows_message(report), report)
    return ValidatedData(
        x=encoded.x[ok[encoded.keep]],
        y=y,
        ids=ids[ok],
        rows=np.flatnonzero(ok),
        report=report,
    )


def _text(col: pd.Series) -> np.ndarray:
    """Stripped strings, "" for missing, as an object array."""
    return col.astype("string").str.strip().fillna("").to_numpy(dtype=object)


def _check_schema(frame: pd.DataFrame, contract: Contract, require_label: bool) -> None:
    """Raise SchemaMismatchError naming repeated or missing columns and how to fix them."""
    where = f"contract '{contract.name}' v{contract.version} (hash {contract.hash[:12]})"
    names = [str(c) for c in frame.columns]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise SchemaMismatchError(
            f"data for {where} repeats column names {repeated}: rename or remove the copies "
            "in the source (table, query or file header)"
        )
    required = [c for c in contract.required_columns if require_label or c != contract.label.column]
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return
    by_lower = {c.lower(): c for c in names}
    hints = [f"'{by_lower[m.lower()]}' -> '{m}'" for m in missing if m.lower() in by_lower]
    todo = ["export these columns from the source under exactly these (case-sensitive) names"]
    if hints:
        todo.append(f"rename differently-cased columns ({', '.join(hints)})")
    if contract.id in missing:
        todo.append(
            f"if the data has no customer id, add one as '{contract.id}' or enable row-number "
            "ids (id-from-row) in the node config"
        )
    if require_label and contract.label.column in missing:
        todo.append("for scoring without labels, validate with require_label=False")
    todo.append("check that this node uses the contract the federation agreed on")
    raise SchemaMismatchError(
        f"data does not match {where}: missing required column(s) {missing} "
        f"({len(names)} column(s) present). What to do: " + "; ".join(todo) + "."
    )


def _check_labels(
    labels: np.ndarray, contract: Contract, report: QualityReport, reject: Reject
) -> np.ndarray:
    """Reject missing/mis-cased labels; any other non-positive value is negative. Returns 0/1."""
    pos_value = contract.label.positive
    missing = labels == ""
    reject(missing, REJECT_LABEL_MISSING)
    lowered = np.array([v.lower() for v in labels], dtype=object)
    miscased = (lowered == pos_value.lower()) & (labels != pos_value)
    reject(miscased, REJECT_LABEL_CASE)
    positive = labels == pos_value
    report.label_values = len(set(labels[~missing].tolist()))
    col = contract.label.column
    if report.label_values > 2:
        report.warnings.append(
            f"label column '{col}' has {report.label_values} distinct values: every value "
            f"other than the positive one counts as negative; check the export"
        )
    if not positive.any() and (~missing).any():
        report.warnings.append(
            f"no row of label column '{col}' has the contract's positive value: check "
            "label.positive against the export (values are case-sensitive)"
        )
    return positive


def _fill_feature_stats(report: QualityReport, contract: Contract, stats: EncodingStats) -> None:
    n = max(report.rows_read, 1)
    report.values_clipped = {k: v for k, v in sorted(stats.clipped.items()) if v}
    report.unknown_categories = {k: v for k, v in sorted(stats.unknown_category.items()) if v}
    report.missing_rate = {f: stats.missing[f] / n for f in contract.feature_names}


def _no_rows_message(report: QualityReport) -> str:
    by_reason = sorted(report.rejected_by_reason.items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"{r}: {c}" for r, c in by_reason) or "none (the data has no rows)"
    return (
        f"no usable rows for contract '{report.contract_name}': {report.rows_read} read, "
        f"0 accepted. Rejected rows by reason: {listed}. Fix the most frequent reason in the "
        "source, or check that this node uses the right contract."
    )
