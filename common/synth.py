"""Deterministic synthetic customer data for tests, demos and benchmarks (contracts/synthetic.yaml).

Rows belong to departments (the natural partition key: one node per department) that differ in
size, feature mix and churn rate, so federated runs see realistic non-IID data. The label follows
a known logistic model of the features, so a logistic regression reaches ROC AUC about 0.8. A few
blank values, out-of-range values and unknown categories are planted on purpose so that every
node exercises validation; set ``dirty=False`` for spotless data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ID_COLUMN = "customer_id"
DEPARTMENT_COLUMN = "department"
LABEL_COLUMN = "churned"
PLANS = ("basic", "standard", "premium", "enterprise")
CHANNELS = ("web", "store", "phone", "partner")
REGIONS = ("north", "south", "east", "west")
UNKNOWN_CHANNEL = "kiosk"  # not in the contract's vocabulary: encoded as "other" and counted

# Share of rows given each planted problem (when dirty=True).
_RATE_MISSING_SPEND = 0.005  # blank monthly_spend: imputed
_RATE_MISSING_LOGIN = 0.003  # blank days_since_last_login: row rejected
_RATE_UNKNOWN_CHANNEL = 0.002  # channel outside the vocabulary: mapped to other
_RATE_BLANK_REGION = 0.005  # blank region: mapped to other
_RATE_TICKET_OUTLIER = 0.002  # support_tickets above the contract's max: clipped


def department_names(departments: int) -> list[str]:
    """Names of the departments `generate` uses, in order."""
    return [f"dept-{k:02d}" for k in range(departments)]


def generate(
    n_rows: int, seed: int = 0, departments: int = 4, *, dirty: bool = True
) -> pd.DataFrame:
    """Synthetic customers: same arguments give the same frame on every machine."""
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    if departments < 1:
        raise ValueError(f"departments must be >= 1, got {departments}")
    rng = np.random.default_rng([seed, 0])
    n = n_rows

    # Departments: unequal sizes, and each has its own base churn rate and customer mix.
    weights = 1.0 / (1.0 + 0.5 * np.arange(departments))
    dept = rng.choice(departments, size=n, p=weights / weights.sum())
    shift = np.linspace(-1.0, 1.0, departments) if departments > 1 else np.zeros(1)
    d = shift[dept]

    plan_logits = np.stack([0.8 * d, np.zeros(n), -0.3 * d, -0.8 * d - 0.6], axis=1)
    plan = _choice_rows(rng, plan_logits)
    channel = rng.choice(len(CHANNELS), size=n, p=[0.45, 0.25, 0.2, 0.1])
    region = rng.choice(len(REGIONS), size=n)
    tenure = np.minimum(rng.gamma(2.0, 14.0 * np.exp(-0.3 * d)), 120).astype(np.int64)
    age = np.clip(rng.normal(45, 14, n), 18, 95).astype(np.int64)
    spend = np.round(rng.lognormal(np.log(40.0) + 0.35 * plan, 0.35), 2)
    tickets = rng.poisson(0.8 + 0.6 * (plan == 0) + 0.4 * np.maximum(d, 0))
    login = np.minimum(rng.exponential(20.0 + 10.0 * (channel == 1)), 365).astype(np.int64)
    autopay = rng.random(n) < 0.35 + 0.1 * plan
    app = rng.random(n) < 0.55 - 0.15 * (channel == 1)

    logit = (
        -1.6
        + 0.6 * d
        - 0.045 * tenure
        + 0.012 * (spend - 40.0)
        + 0.45 * tickets
        + 0.025 * login
        - 0.6 * autopay
        - 0.4 * app
        + np.array([0.5, 0.0, -0.3, -0.8])[plan]
        + np.array([0.2, -0.2, 0.0, 0.3])[channel]
        - 0.004 * (age - 45)
    )
    churned = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    frame = pd.DataFrame(
        {
            ID_COLUMN: [f"S{seed}-{i:07d}" for i in range(n)],
            DEPARTMENT_COLUMN: np.array(department_names(departments), dtype=object)[dept],
            "tenure_months": tenure,
            "monthly_spend": spend,
            "support_tickets": tickets,
            "days_since_last_login": pd.array(login, dtype="Int64"),
            "age": age,
            "plan": np.array(PLANS, dtype=object)[plan],
            "channel": np.array(CHANNELS, dtype=object)[channel],
            "region": np.array(REGIONS, dtype=object)[region],
            "autopay": np.where(autopay, "yes", "no").astype(object),
            "has_mobile_app": np.where(app, "1", "0").astype(object),
            LABEL_COLUMN: np.where(churned, "yes", "no").astype(object),
        }
    )
    if dirty:
        _plant_problems(frame, np.random.default_rng([seed, 1]))
    return frame


def _choice_rows(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One categorical draw per row from row-wise softmax(logits)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    u = rng.random(len(logits))[:, None]
    return np.minimum((u > cdf).sum(axis=1), logits.shape[1] - 1)


def _plant_problems(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    """The realistic dirt of an export: blanks, outliers, a category nobody agreed on."""
    n = len(frame)

    def rows(rate: float) -> np.ndarray:
        return rng.random(n) < rate

    frame.loc[rows(_RATE_MISSING_SPEND), "monthly_spend"] = np.nan
    frame.loc[rows(_RATE_MISSING_LOGIN), "days_since_last_login"] = pd.NA
    frame.loc[rows(_RATE_UNKNOWN_CHANNEL), "channel"] = UNKNOWN_CHANNEL
    frame.loc[rows(_RATE_BLANK_REGION), "region"] = ""
    outliers = rows(_RATE_TICKET_OUTLIER)
    frame.loc[outliers, "support_tickets"] = 25 + rng.integers(0, 20, int(outliers.sum()))


def write_csv(path: str | Path, n_rows: int, seed: int = 0, departments: int = 4) -> Path:
    """Write `generate(n_rows, seed, departments)` as a comma-separated UTF-8 CSV; return path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    generate(n_rows, seed=seed, departments=departments).to_csv(out, index=False)
    return out
