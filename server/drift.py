"""Drift of a published model's features: DP reference histograms, and checks against them.

A model's reference is every contract feature's histogram (numeric features in `bins` equal
bins over the contract's range, categorical/binary ones over their vocabulary) on the data it
was trained on. By default the nodes release it with the run that trains the model: on finish,
each node whose owner allows analytics sends its noised histograms (one Gaussian release,
purpose `analytics/drift`, planned into the run's reservation; run-config
`drift-reference-noise`), and the ServerApp pools and stores them when it publishes
(`pool_finish_references`, `store_finish_reference`). `atoll drift reference` records a new one
later as ordinary analytics queries (purpose `analytics`). A drift check asks every node for the
same histograms on its current data and compares the pooled histograms feature by feature with
the population stability index, PSI = Σ_b (c_b − r_b) · ln(c_b / r_b) over the two distributions
(counts clipped at 0, plus a floor per bin: the larger of the two sides' noise std for that bin,
so an empty bin stays finite and a bin whose count is within the noise cannot dominate).

Uncertainty, from the known noise (post-processing of public outputs only):
- `psi_low`/`psi_high`: a 95% parametric bootstrap of the PSI itself — both histograms redrawn
  around their noisy counts with each bin's known Gaussian noise std; the basic (reflected)
  interval, since redrawing adds noise and noise only ever raises a PSI.
- `threshold`: what PSI reaches without any drift, with probability α/F (F features: Bonferroni).
  Simulated: both histograms drawn from one pooled distribution (multinomial sampling of each
  side's size) plus each side's known DP noise. A feature is `flagged` when its PSI exceeds it,
  i.e. its drift is significant beyond the noise and the sampling.

A check's ε: the whole check (all features) composes to `epsilon` per node: F Gaussian releases
at noise multiplier σ·√F compose exactly to one at σ, the σ that spends `epsilon`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from common.analytics_math import Query, epsilon_of, sigma_for_epsilon
from common.contract import Contract
from common.db import make_engine, migrate, utcnow
from common.drift_reference import reference_layouts, reference_queries, reference_size
from common.errors import AtollError
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from server.query_store import DriftRecord
from server.registry import MIGRATIONS_DIR

DEFAULT_BINS = 10
DEFAULT_ALPHA = 0.05
DEFAULT_DRAWS = 2000
PSEUDO_COUNT = 0.5

Histograms = dict[str, dict[str, Any]]  # feature → {labels, counts, std, participants, query_id}
Answer = Callable[[str, Query], dict[str, Any]]  # (feature, query) → a stored query's record


class DriftError(AtollError, RuntimeError):
    """A drift step cannot be done (no reference, a query not answered); says what to do."""


# ================================================================================================
# The queries and their answers
# ================================================================================================
def feature_queries(
    contract: Contract, *, epsilon: float, delta: float, bins: int = DEFAULT_BINS
) -> dict[str, Query]:
    """One histogram query per contract feature; together they spend `epsilon` per node."""
    sigma = sigma_for_epsilon(epsilon, delta)
    return reference_queries(contract, noise_multiplier=sigma, bins=bins)


def histogram_of(record: dict[str, Any]) -> dict[str, Any]:
    """The pooled noisy histogram in a stored query's record (one cell: no group_by)."""
    if record.get("status") != "answered":
        raise DriftError(f"query {record.get('id')} was not answered: {record.get('nodes')}")
    result = record["result"]
    return {
        "labels": list(result["value_names"]),
        "counts": [r["estimate"] for r in result["rows"]],
        "std": list(result["noise_std_total"]),
        "participants": list(result["participants"]),
        "epsilon_per_node": dict(result["epsilon_per_node"]),
        "query_id": record.get("id"),
    }


def collect(queries: dict[str, Query], ask: Answer) -> Histograms:
    """Each feature's pooled histogram, by asking the federation (`ask` runs one query)."""
    return {name: histogram_of(ask(name, q)) for name, q in queries.items()}


# ================================================================================================
# PSI and its noise-aware uncertainty
# ================================================================================================
def _proportions(counts: np.ndarray, floor: np.ndarray | float) -> np.ndarray:
    c = np.clip(counts, 0, None) + floor
    return c / c.sum(axis=-1, keepdims=True)


def psi(
    reference: np.ndarray, current: np.ndarray, floor: np.ndarray | float = PSEUDO_COUNT
) -> np.ndarray:
    """PSI of (batches of) count vectors along the last axis; `floor` is added to every bin's
    count (clipped at 0) on both sides."""
    r, c = _proportions(reference, floor), _proportions(current, floor)
    return np.sum((c - r) * np.log(c / r), axis=-1)


def compare(
    reference: dict[str, Any],
    current: dict[str, Any],
    *,
    level: float,
    draws: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One feature: PSI, its 95% bootstrap interval, the no-drift threshold at `level`, flag."""
    if reference["labels"] != current["labels"]:
        raise DriftError("the reference and current histograms have different bins")
    ref, cur = np.asarray(reference["counts"], float), np.asarray(current["counts"], float)
    s_ref, s_cur = np.asarray(reference["std"], float), np.asarray(current["std"], float)
    floor = np.maximum(np.maximum(s_ref, s_cur), PSEUDO_COUNT)  # a bin within the noise
    observed = float(psi(ref, cur, floor))  # moves the PSI little: its count is that uncertain
    k = len(ref)
    boot = psi(
        ref + rng.standard_normal((draws, k)) * s_ref,
        cur + rng.standard_normal((draws, k)) * s_cur,
        floor,
    )
    n_ref = max(int(round(np.clip(ref, 0, None).sum())), 1)
    n_cur = max(int(round(np.clip(cur, 0, None).sum())), 1)
    pooled = _proportions(ref + cur, PSEUDO_COUNT)
    null = psi(
        rng.multinomial(n_ref, pooled, size=draws) + rng.standard_normal((draws, k)) * s_ref,
        rng.multinomial(n_cur, pooled, size=draws) + rng.standard_normal((draws, k)) * s_cur,
        floor,
    )
    threshold = float(np.quantile(null, 1 - level))
    lo, hi = np.percentile(boot, [2.5, 97.5])  # basic bootstrap: redrawing adds noise, and
    return {  # noise only raises a PSI, so the percentiles are reflected about the estimate
        "psi": observed,
        "psi_low": max(2 * observed - float(hi), 0.0),
        "psi_high": 2 * observed - float(lo),
        "threshold": threshold,
        "flagged": observed > threshold,
        "reference_count": n_ref,
        "current_count": n_cur,
    }


def drift_report(
    reference: Histograms,
    current: Histograms,
    *,
    alpha: float = DEFAULT_ALPHA,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Per feature PSI, uncertainty and flag; features flagged at family-wise level `alpha`."""
    missing = sorted(set(reference) - set(current))
    if missing:
        raise DriftError(f"no current histogram for {', '.join(missing)}")
    rng = np.random.default_rng(seed)  # post-processing of public outputs only
    level = alpha / max(len(reference), 1)
    features = {
        name: compare(reference[name], current[name], level=level, draws=draws, rng=rng)
        for name in reference
    }
    return {
        "alpha": alpha,
        "per_feature_level": level,
        "draws": draws,
        "features": features,
        "flagged": sorted(n for n, f in features.items() if f["flagged"]),
    }


# ================================================================================================
# The two steps
# ================================================================================================
def record_reference(
    store: DriftStore,
    *,
    model: tuple[str, int],
    contract: Contract,
    ask: Answer,
    epsilon: float,
    delta: float,
    bins: int = DEFAULT_BINS,
) -> int:
    """Ask for every feature's DP histogram (on the data the model was trained on) and keep it
    as the model version's reference; returns the record id."""
    queries = feature_queries(contract, epsilon=epsilon, delta=delta, bins=bins)
    histograms = collect(queries, ask)
    report = {"source": "queries", "epsilon_per_node": epsilon, "delta": delta, "bins": bins}
    return _store_reference(store, model, contract, histograms, queries, report)


def _store_reference(
    store: DriftStore,
    model: tuple[str, int],
    contract: Contract,
    histograms: Histograms,
    queries: dict[str, Query],
    report: dict[str, Any],
) -> int:
    """A reference row: the pooled histograms and the queries a check repeats."""
    return store.add(
        model_name=model[0],
        model_version=model[1],
        kind="reference",
        contract_hash=contract.hash,
        histograms=histograms,
        report={**report, "queries": {n: q.model_dump(mode="json") for n, q in queries.items()}},
    )


def pool_finish_references(
    contract: Contract,
    *,
    noise_multiplier: float,
    bins: int,
    delta: float,
    finished: dict[str, pb.Finished],
) -> tuple[Histograms, dict[str, str]]:
    """The references nodes released on finish, pooled per feature; (histograms, why each
    malformed one was left out). Nodes that sent none (owners who do not allow analytics) are
    not participants; every node's own σ is used for its noise (scaled fits differ by node), and
    its own δ (the run's `delta` if it states none) for its ε."""
    from server.analytics import result_of  # the same summing as any query (lazy: flwr)

    queries = reference_queries(contract, noise_multiplier=noise_multiplier, bins=bins)
    layouts = reference_layouts(contract, queries)
    size, features = reference_size(layouts), len(queries)
    good: dict[str, pb.Finished] = {}
    problems: dict[str, str] = {}
    for name, f in finished.items():
        sigma = f.drift_reference_noise
        if not f.drift_reference:
            continue
        if len(f.drift_reference) != size:
            problems[name] = f"{len(f.drift_reference)} numbers, the layout has {size}"
        elif not (math.isfinite(sigma) and sigma > 0):
            problems[name] = "no noise multiplier"
        else:
            good[name] = f
    if not good:
        return {}, problems
    # the whole reference's ε on each node: all features together are one release at σ/√F
    epsilons = {
        name: epsilon_of(f.drift_reference_noise / math.sqrt(features), f.budget.delta or delta)
        for name, f in good.items()
    }
    histograms: Histograms = {}
    offset = 0
    for feature, query in queries.items():
        lay = layouts[feature]
        answers = {
            name: pb.Answered(
                node_name=name,
                value_names=lay.value_names,
                cells=[
                    pb.Cell(
                        key=list(lay.keys[0]),
                        values=list(f.drift_reference[offset : offset + lay.size]),
                        noise_std=lay.noise_std(f.drift_reference_noise),
                    )
                ],
                noise_multiplier=f.drift_reference_noise,
                sensitivity=lay.sensitivity,
                epsilon=epsilons[name],
                budget=f.budget,
            )
            for name, f in good.items()
        }
        offset += lay.size
        result = result_of(query, lay, answers)
        histograms[feature] = histogram_of({"status": "answered", "result": result})
    return histograms, problems


def store_finish_reference(
    store: DriftStore,
    *,
    model: tuple[str, int],
    contract: Contract,
    histograms: Histograms,
    noise_multiplier: float,
    bins: int,
    delta: float,
) -> int:
    """Keep the pooled finish-time references as the model version's drift reference."""
    queries = reference_queries(contract, noise_multiplier=noise_multiplier, bins=bins)
    first = next(iter(histograms.values()))
    report = {
        "source": "finish",  # released by the nodes with the run that trained the model
        "epsilon_per_node": first["epsilon_per_node"],
        "participants": first["participants"],
        "delta": delta,
        "bins": bins,
    }
    return _store_reference(store, model, contract, histograms, queries, report)


def run_check(
    store: DriftStore,
    *,
    model: tuple[str, int],
    contract: Contract,
    ask: Answer,
    alpha: float = DEFAULT_ALPHA,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    epsilon: float | None = None,
    delta: float = 1e-5,
) -> tuple[int, dict[str, Any]]:
    """Ask for the reference's histograms on the current data, compare, store; (id, report).

    The check's own noise: `epsilon` per node for all features (at `delta`), or, without it, the
    reference's. Either way the bins are the reference's; the PSI threshold covers both noises.
    """
    reference = store.latest(model[0], model[1], "reference")
    if reference is None:
        raise DriftError(
            f"model {model[0]} v{model[1]} has no reference histograms: record them with "
            f"`atoll drift reference {model[0]} --version {model[1]}` (on the training data)"
        )
    if reference.contract_hash != contract.hash:
        raise DriftError("the model's contract is not the one its reference was recorded under")
    queries = {n: Query.model_validate(q) for n, q in reference.report["queries"].items()}
    if epsilon is not None:  # the reference's histograms (its bins), at the check's own noise
        queries = feature_queries(
            contract, epsilon=epsilon, delta=delta, bins=reference.report["bins"]
        )
    current = collect(queries, ask)
    report = drift_report(reference.histograms, current, alpha=alpha, draws=draws, seed=seed)
    report["reference_id"] = reference.id
    check_id = store.add(
        model_name=model[0],
        model_version=model[1],
        kind="check",
        contract_hash=contract.hash,
        histograms=current,
        report=report,
    )
    return check_id, report


# ================================================================================================
# Storage: `drift_checks` (references and checks, by model version)
# ================================================================================================
class DriftStore:
    """`drift_checks` in the coordinator database (opening it by URL migrates it)."""

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        if (url is None) == (engine is None):
            raise ValueError("give a database URL or an engine")
        self._owned = engine is None
        self.engine = engine if engine is not None else make_engine(url or "")
        if self._owned:
            migrate(self.engine, MIGRATIONS_DIR)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def add(self, **fields: Any) -> int:
        with self._sessions() as s, s.begin():
            row = DriftRecord(created_at=utcnow(), **fields)
            s.add(row)
            s.flush()
            return int(row.id)

    def latest(self, name: str, version: int, kind: str) -> DriftRecord | None:
        with self._sessions() as s:
            q = (
                select(DriftRecord)
                .where(
                    DriftRecord.model_name == name,
                    DriftRecord.model_version == version,
                    DriftRecord.kind == kind,
                )
                .order_by(DriftRecord.id.desc())
            )
            return s.scalars(q).first()

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()


def summary(record: DriftRecord | None) -> dict[str, Any] | None:
    """What a model card shows of its last drift check (None: never checked)."""
    if record is None:
        return None
    report = record.report
    return {
        "checked_at": record.created_at.isoformat(),
        "flagged": report.get("flagged", []),
        "psi": {n: round(f["psi"], 4) for n, f in report.get("features", {}).items()},
        "alpha": report.get("alpha"),
        "check_id": record.id,
    }
