"""Federated analytics: the query a user writes, its cells, sensitivities, noise and intervals.

Shared by the node (which validates a query against its own contract and answers it) and the
coordinator (which previews accuracy before anything is spent and sums the nodes' answers), so
both derive the same cell layout and the same per-value noise scales from the same public facts:
the query and the contract. Nothing here touches data.

The mechanism. A query is grouped by up to two categorical/binary contract features: its cells
are every combination of their vocabularies (plus `<other>`), so which cells exist reveals
nothing, and each customer falls in exactly one cell (or none, if a filter drops them). Per cell
a node releases a few values v_j, each moved by at most b_j when one customer is added or
removed (count → 1; sum → max(|min|, |max|); mean → the sum centred on the range's midpoint,
bound (max − min)/2, and the count; rate → positives and count; histogram → one bin by 1). The
normalised vector (v_j / b_j) has L2 sensitivity Δ = 1 (one value per cell moves) or √2 (rate
and mean: two values of one cell move), and each value gets Gaussian noise of std σ·Δ·b_j: one
Gaussian mechanism at sampling rate 1, the ledger event `(σ, 1.0, 1)`.

Intervals (95%): a summed count/sum/bin over k nodes has noise variance Σ_k s_k², so ±1.96·√Σ s_k²
(±1.96·√k·s for equal noise); ratios (rate, mean) use the delta method,
Var(S/N) ≈ (Var S + R² Var N) / N²; quantiles come from the summed DP histogram by linear
interpolation, their interval from a parametric bootstrap over the known noise (post-processing;
the union of its percentile and basic intervals, see `_bootstrap_interval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature
from common.encoding import OTHER

Kind = Literal["count", "rate", "sum", "mean", "histogram", "quantile"]
KINDS: tuple[str, ...] = ("count", "rate", "sum", "mean", "histogram", "quantile")
Z95 = 1.959963984540054
TRUE, FALSE = "true", "false"
MAX_GROUP_BY = 2
MAX_VALUES = 20_000  # cells × values per cell one query may release
MAX_QUANTILES = 20
DEFAULT_QUANTILE_BINS = 50
DEFAULT_MIN_COUNT = 20.0


class QueryError(ValueError):
    """A query that does not fit the contract; `code` names the check (sent as a refusal)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ================================================================================================
# The query as a user writes it (JSON), and its wire form
# ================================================================================================
class FilterSpec(BaseModel):
    """Keep rows whose `field` is one of `values` (categorical/binary) or in [low, high]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1, max_length=200)
    values: list[str] | None = Field(None, max_length=1000)
    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)


class Query(BaseModel):
    """One analytics query, e.g. `{"kind": "rate", "field": "Churn", "group_by":
    ["InternetService"], "epsilon": 0.5}`. Give `epsilon` (each node calibrates σ to spend at
    most this) or `noise_multiplier` (σ). `min_count` is the coordinator's reliability threshold
    (post-processing only; it never reaches a node)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    field: str = Field("", max_length=200)
    group_by: list[str] = Field(default_factory=list, max_length=MAX_GROUP_BY)
    filters: list[FilterSpec] = Field(default_factory=list, max_length=20)
    bins: int = Field(0, ge=0, le=100_000)
    quantiles: list[float] = Field(default_factory=list, max_length=MAX_QUANTILES)
    noise_multiplier: float = Field(0.0, ge=0, allow_inf_nan=False)
    epsilon: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_count: float = Field(DEFAULT_MIN_COUNT, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _noise(self) -> Query:
        if (self.noise_multiplier > 0) == (self.epsilon > 0):
            raise ValueError("give exactly one of epsilon (target per node) or noise_multiplier")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return self

    def to_pb(self, contract_hash: str) -> Any:
        from common.protos.atoll.node.v1 import runtime_pb2 as pb

        return pb.QuerySpec(
            kind=self.kind,
            field=self.field,
            group_by=list(self.group_by),
            filters=[
                pb.Filter(field=f.field, values=f.values or [], low=f.low, high=f.high)
                for f in self.filters
            ],
            bins=self.bins,
            quantiles=list(self.quantiles),
            noise_multiplier=self.noise_multiplier,
            target_epsilon=self.epsilon,
            contract_hash=contract_hash,
        )

    @classmethod
    def from_pb(cls, spec: Any) -> Query:
        """The node's view of a wire spec (raises pydantic's ValidationError if malformed)."""
        return cls(
            kind=spec.kind,
            field=spec.field,
            group_by=list(spec.group_by),
            filters=[
                FilterSpec(
                    field=f.field,
                    values=list(f.values) if f.values else None,
                    low=f.low if f.HasField("low") else None,
                    high=f.high if f.HasField("high") else None,
                )
                for f in spec.filters
            ],
            bins=spec.bins,
            quantiles=list(spec.quantiles),
            noise_multiplier=spec.noise_multiplier,
            epsilon=spec.target_epsilon,
        )


# ================================================================================================
# Layout: cells, released values, their bounds — from the query and the contract alone
# ================================================================================================
@dataclass(frozen=True)
class Layout:
    keys: list[tuple[str, ...]]  # the cells, in the contract's vocabulary order
    value_names: list[str]  # what each cell releases
    bounds: list[float]  # per value: most one customer can move it (b_j)
    sensitivity: float  # Δ: L2 sensitivity of the normalised vector (v_j / b_j)
    center: float = 0.0  # mean: the midpoint the released sum is centred on
    value_range: tuple[float, float] | None = None  # mean/quantile: the field's [min, max]
    edges: list[float] | None = None  # numeric histogram/quantile: the bin edges

    @property
    def size(self) -> int:
        return len(self.keys) * len(self.value_names)

    def noise_std(self, sigma: float) -> list[float]:
        """The std of the noise on each value at noise multiplier σ."""
        return [sigma * self.sensitivity * b for b in self.bounds]


def group_keys(contract: Contract, name: str) -> list[str]:
    """The public keys of a group-by feature: its vocabulary and `<other>`, or false/true."""
    try:
        f = contract.feature(name)
    except KeyError:
        raise QueryError(
            "query-field", f"group_by '{name[:60]}' is not a contract feature"
        ) from None
    if isinstance(f, CategoricalFeature):
        return [*f.vocabulary, OTHER]
    if isinstance(f, BinaryFeature):
        return [FALSE, TRUE]
    raise QueryError(
        "query-group-by", f"group_by '{name}' is numeric; group by categorical or binary features"
    )


def _numeric(contract: Contract, name: str, kind: str) -> NumericFeature:
    try:
        f = contract.feature(name)
    except KeyError:
        raise QueryError(
            "query-field", f"{kind} field '{name[:60]}' is not a contract feature"
        ) from None
    if not isinstance(f, NumericFeature):
        raise QueryError("query-field", f"{kind} needs a numeric feature; '{name}' is {f.type}")
    return f


def bin_edges(f: NumericFeature, bins: int) -> list[float]:
    return [float(v) for v in np.linspace(f.min, f.max, bins + 1)]


def _bin_labels(edges: list[float]) -> list[str]:
    last = len(edges) - 2
    return [
        f"[{lo:g}, {hi:g}{']' if i == last else ')'}"
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    ]


def layout(query: Query, contract: Contract, *, max_bins: int | None = 100) -> Layout:
    """The cells and values `query` releases under `contract`; QueryError if it does not fit.

    `max_bins`: the owner's limit on a numeric field's bins; None for planning from public
    settings alone (the owner's limit is checked where the query is admitted)."""
    if len(set(query.group_by)) != len(query.group_by):
        raise QueryError("query-group-by", "group_by repeats a feature")
    groups = [group_keys(contract, g) for g in query.group_by]
    keys: list[tuple[str, ...]] = [()]
    for g in groups:
        keys = [(*k, v) for k in keys for v in g]
    check_filters(query, contract)
    out = _values(query, contract, max_bins)
    result = Layout(keys=keys, **out)
    if result.size > MAX_VALUES:
        raise QueryError(
            "query-too-large",
            f"the query releases {result.size} values (cells × values); at most {MAX_VALUES}",
        )
    return result


def _values(query: Query, contract: Contract, max_bins: int | None) -> dict[str, Any]:
    kind, name = query.kind, query.field
    if kind == "count":
        return {"value_names": ["count"], "bounds": [1.0], "sensitivity": 1.0}
    if kind == "rate":
        if name != contract.label.column:
            try:
                f = contract.feature(name)
            except KeyError:
                raise QueryError(
                    "query-field", f"rate field '{name[:60]}' is neither the label nor a feature"
                ) from None
            if not isinstance(f, BinaryFeature):
                raise QueryError(
                    "query-field", f"rate needs a binary feature or the label; '{name}' is {f.type}"
                )
        return {
            "value_names": ["positives", "count"],
            "bounds": [1.0, 1.0],
            "sensitivity": math.sqrt(2),
        }
    if kind == "sum":
        f = _numeric(contract, name, kind)
        return {
            "value_names": ["sum"],
            "bounds": [max(abs(f.min), abs(f.max))],
            "sensitivity": 1.0,
        }
    if kind == "mean":
        f = _numeric(contract, name, kind)
        return {
            "value_names": ["centered_sum", "count"],
            "bounds": [(f.max - f.min) / 2, 1.0],
            "sensitivity": math.sqrt(2),
            "center": (f.min + f.max) / 2,
            "value_range": (f.min, f.max),
        }
    if kind in ("histogram", "quantile"):
        try:
            f = contract.feature(name)
        except KeyError:
            raise QueryError(
                "query-field", f"{kind} field '{name[:60]}' is not a contract feature"
            ) from None
        if isinstance(f, NumericFeature):
            bins = query.bins or (DEFAULT_QUANTILE_BINS if kind == "quantile" else 0)
            if bins < 2 or (max_bins is not None and bins > max_bins):
                allowed = "at least 2" if max_bins is None else f"2..{max_bins} (owner's limit)"
                raise QueryError("query-bins", f"bins {query.bins} is outside {allowed}")
            edges = bin_edges(f, bins)
            names = _bin_labels(edges)
            extra: dict[str, Any] = {"edges": edges, "value_range": (f.min, f.max)}
        elif kind == "quantile":
            raise QueryError(
                "query-field", f"quantile needs a numeric feature; '{name}' is {f.type}"
            )
        else:
            names, extra = group_keys(contract, name), {}
        if kind == "quantile" and not query.quantiles:
            raise QueryError("query-quantiles", "quantile needs at least one probability")
        return {"value_names": names, "bounds": [1.0] * len(names), "sensitivity": 1.0, **extra}
    raise QueryError("query-kind", f"unknown query kind '{kind[:40]}'")


def check_filters(query: Query, contract: Contract) -> None:
    for flt in query.filters:
        if flt.field == contract.label.column:
            allowed = {TRUE, FALSE}
            numeric = False
        else:
            try:
                f = contract.feature(flt.field)
            except KeyError:
                raise QueryError(
                    "query-filter", f"filter field '{flt.field[:60]}' is not a contract field"
                ) from None
            numeric = isinstance(f, NumericFeature)
            allowed = set(group_keys(contract, f.name)) if not numeric else set()
        if numeric:
            if flt.values is not None or (flt.low is None and flt.high is None):
                raise QueryError(
                    "query-filter", f"filter on numeric '{flt.field}' takes low and/or high only"
                )
            if flt.low is not None and flt.high is not None and flt.low > flt.high:
                raise QueryError("query-filter", f"filter on '{flt.field}': low > high")
        else:
            if flt.low is not None or flt.high is not None or not flt.values:
                raise QueryError(
                    "query-filter", f"filter on '{flt.field}' takes a list of values only"
                )
            if bad := [v for v in flt.values if v not in allowed]:
                raise QueryError(
                    "query-key",
                    f"filter on '{flt.field}': {len(bad)} value(s) outside the contract's "
                    f"vocabulary (allowed: {', '.join(sorted(allowed))[:300]})",
                )


# ================================================================================================
# ε ↔ σ for one Gaussian release at sampling rate 1: the ledger event (σ, 1.0, 1)
# ================================================================================================
def epsilon_of(sigma: float, delta: float) -> float:
    """ε the ledger charges for one query at noise multiplier σ (min(RDP, PLD) accountant)."""
    from privacy.dp import epsilon

    return epsilon([(sigma, 1.0, 1)], delta)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def analytic_delta(sigma: float, eps: float) -> float:
    """Exact δ(ε) of a Gaussian mechanism with sensitivity 1 and noise σ (Balle & Wang 2018)."""
    a = 1 / (2 * sigma)
    return _phi(a - eps * sigma) - math.exp(eps) * _phi(-a - eps * sigma)


def sigma_for_epsilon(target: float, delta: float, tolerance: float = 0.002) -> float:
    """Smallest σ (within `tolerance`) whose charged ε is at most `target`: bisection on
    `privacy.dp.epsilon` (monotone in σ), bracketed by the exact analytic Gaussian σ."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError("target ε must be positive and finite")
    lo, hi = 1e-3, 1e6  # the exact σ: the accountant's ε is never below the exact one
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if analytic_delta(mid, target) > delta:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    lo = hi * (1 - 1e-6)
    while epsilon_of(hi, delta) > target:
        lo, hi = hi, hi * 1.02
    if epsilon_of(lo, delta) <= target:
        return lo
    for _ in range(40):  # log-bisection: keep epsilon_of(hi) <= target < epsilon_of(lo)
        if epsilon_of(hi, delta) >= target * (1 - tolerance) or hi / lo < 1 + 1e-6:
            break
        mid = math.sqrt(lo * hi)
        if epsilon_of(mid, delta) > target:
            lo = mid
        else:
            hi = mid
    return hi


# ================================================================================================
# Accuracy before spending
# ================================================================================================
def expected_intervals(
    query: Query,
    contract: Contract,
    *,
    nodes: int,
    sigma: float,
    cell_sizes: tuple[int, ...] = (100, 1000, 10_000),
) -> dict[str, Any]:
    """The 95% half-widths every cell will have, from public bounds and the noise alone.

    Sums, counts and bins: ±1.96·√k·s. Rates and means also depend on the cell's (unknown) size
    n: given for a few sizes, at the worst case (rate 1/2, mean at a range end)."""
    lay = layout(query, contract, max_bins=None)
    stds = lay.noise_std(sigma)
    per_value = {
        name: Z95 * math.sqrt(nodes) * s for name, s in zip(lay.value_names, stds, strict=True)
    }
    out: dict[str, Any] = {
        "cells": len(lay.keys),
        "nodes": nodes,
        "noise_multiplier": sigma,
        "noise_std_per_node": dict(zip(lay.value_names, stds, strict=True)),
        "half_width": per_value
        if query.kind not in ("histogram", "quantile")
        else {"each bin": per_value[lay.value_names[0]]},
    }
    if query.kind in ("rate", "mean"):
        out["ratio_half_width"] = {
            str(n): ratio_half_width(query.kind, lay, nodes, sigma, n) for n in cell_sizes
        }
    return out


def ratio_half_width(kind: str, lay: Layout, nodes: int, sigma: float, n: float) -> float:
    """Expected 95% half-width of a rate or mean in a cell of n customers (worst case)."""
    s_num, s_den = (nodes * s**2 for s in lay.noise_std(sigma))
    r = 0.5 if kind == "rate" else lay.bounds[0]  # worst case: |centred mean| at its bound
    return Z95 * math.sqrt(s_num + r**2 * s_den) / n


def width_at_unit_sigma(
    query: Query, contract: Contract, nodes: int, cell_size: float | None
) -> float:
    """The 95% half-width at σ = 1 (every width is proportional to σ)."""
    lay = layout(query, contract, max_bins=None)
    if query.kind in ("rate", "mean"):
        if not cell_size:
            raise ValueError(f"{query.kind}: give the cell size the target width is meant for")
        return ratio_half_width(query.kind, lay, nodes, 1.0, cell_size)
    return Z95 * math.sqrt(nodes) * lay.noise_std(1.0)[0]


def epsilon_for_width(
    query: Query,
    contract: Contract,
    *,
    nodes: int,
    half_width: float,
    delta: float,
    cell_size: float | None = None,
) -> tuple[float, float]:
    """(ε per node, σ) that reach a 95% half-width of `half_width` per cell."""
    if not half_width > 0:
        raise ValueError("the target half-width must be positive")
    sigma = half_width / width_at_unit_sigma(query, contract, nodes, cell_size)
    return epsilon_of(sigma, delta), sigma


def preview(
    query: Query,
    contract: Contract,
    *,
    nodes: int,
    delta: float,
    target_half_width: float | None = None,
    cell_size: float | None = None,
) -> dict[str, Any]:
    """What `query` will cost each node and the 95% interval of every cell, before anything is
    spent; with `target_half_width`, also the ε that reaches it (ValueError if it cannot)."""
    if query.epsilon > 0:
        sigma, eps = sigma_for_epsilon(query.epsilon, delta), query.epsilon
    else:
        sigma, eps = query.noise_multiplier, epsilon_of(query.noise_multiplier, delta)
    out: dict[str, Any] = {
        "query": query.model_dump(mode="json"),
        "delta": delta,
        "epsilon_per_node": eps,
        **expected_intervals(query, contract, nodes=nodes, sigma=sigma),
    }
    if target_half_width is not None:
        e, s = epsilon_for_width(
            query,
            contract,
            nodes=nodes,
            half_width=target_half_width,
            delta=delta,
            cell_size=cell_size,
        )
        out["for_target"] = {
            "half_width": target_half_width,
            "cell_size": cell_size,
            "epsilon_per_node": e,
            "noise_multiplier": s,
        }
    return out


# ================================================================================================
# The coordinator's post-processing: summed answers → estimates, intervals, reliability
# ================================================================================================
def _interval(est: float, var: float) -> tuple[float, float]:
    h = Z95 * math.sqrt(max(var, 0.0))
    return est - h, est + h


def ratio(
    num: float,
    den: float,
    var_num: float,
    var_den: float,
    *,
    offset: float = 0.0,
    clamp: tuple[float, float] | None = None,
) -> tuple[float | None, float | None, float | None]:
    """offset + num/den and its delta-method 95% interval (None if the noisy count is ≤ 0)."""
    if den <= 0:
        return None, None, None
    r = num / den
    h = Z95 * math.sqrt(max(var_num + r**2 * var_den, 0.0)) / den
    est, lo, hi = offset + r, offset + r - h, offset + r + h
    if clamp is not None:
        est, lo, hi = (min(max(v, clamp[0]), clamp[1]) for v in (est, lo, hi))
    return est, lo, hi


def quantiles_of(hist: np.ndarray, edges: np.ndarray, probs: list[float]) -> list[float]:
    """Quantiles of a (noisy) histogram: negative bins count 0, linear within a bin."""
    h = np.clip(np.asarray(hist, dtype=float), 0, None)
    total = h.sum()
    if total <= 0:
        return [float("nan")] * len(probs)
    cum = np.concatenate([[0.0], np.cumsum(h)]) / total
    return [float(np.interp(p, cum, edges)) for p in probs]


def finish(
    query: Query,
    lay: Layout,
    values: np.ndarray,
    variances: np.ndarray,
    *,
    bootstrap: int = 400,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (cell, statistic): estimate, 95% interval, noisy count, reliability.

    `values` and `variances` are the nodes' answers summed, shape [cells, values]."""
    rows: list[dict[str, Any]] = []
    t = query.min_count

    def row(
        key: tuple[str, ...],
        stat: str,
        est: float | None,
        lo: float | None,
        hi: float | None,
        count: float | None,
    ) -> None:
        rows.append(
            {
                "cell": list(key),
                "statistic": stat,
                "estimate": est,
                "low": lo,
                "high": hi,
                "noisy_count": count,
                "unreliable": count is None or count < t,
            }
        )

    rng = np.random.default_rng(seed)  # post-processing of public outputs only
    for i, key in enumerate(lay.keys):
        v, var = values[i], variances[i]
        if query.kind == "count":
            row(key, "count", float(v[0]), *_interval(float(v[0]), float(var[0])), float(v[0]))
        elif query.kind == "sum":
            lo, hi = _interval(float(v[0]), float(var[0]))
            rows.append(
                {
                    "cell": list(key),
                    "statistic": "sum",
                    "estimate": float(v[0]),
                    "low": lo,
                    "high": hi,
                    "noisy_count": None,
                    "unreliable": False,
                }
            )
        elif query.kind == "rate":
            r_est, r_lo, r_hi = ratio(
                float(v[0]), float(v[1]), float(var[0]), float(var[1]), clamp=(0.0, 1.0)
            )
            row(key, "rate", r_est, r_lo, r_hi, float(v[1]))
        elif query.kind == "mean":
            r_est, r_lo, r_hi = ratio(
                float(v[0]),
                float(v[1]),
                float(var[0]),
                float(var[1]),
                offset=lay.center,
                clamp=lay.value_range,
            )
            row(key, "mean", r_est, r_lo, r_hi, float(v[1]))
        elif query.kind == "histogram":
            for j, name in enumerate(lay.value_names):
                row(key, name, float(v[j]), *_interval(float(v[j]), float(var[j])), float(v[j]))
        else:  # quantile
            edges = np.asarray(lay.edges, dtype=float)
            est_q = quantiles_of(v, edges, query.quantiles)
            draws = v + rng.standard_normal((bootstrap, len(v))) * np.sqrt(np.maximum(var, 0))
            boot = np.array([quantiles_of(d, edges, query.quantiles) for d in draws])
            total = float(np.clip(v, 0, None).sum())
            for j, p in enumerate(query.quantiles):
                if math.isnan(est_q[j]):
                    row(key, f"q{p:g}", None, None, None, total)
                    continue
                b = boot[:, j][~np.isnan(boot[:, j])]
                q_lo, q_hi = (
                    _bootstrap_interval(est_q[j], b, lay.value_range) if len(b) else (None, None)
                )
                row(key, f"q{p:g}", est_q[j], q_lo, q_hi, total)
    return rows


def _bootstrap_interval(
    est: float, draws: np.ndarray, value_range: tuple[float, float] | None
) -> tuple[float, float]:
    """95% interval of a quantile: the union of the percentile and the basic (reflected)
    bootstrap intervals. Redrawing around a noisy histogram adds the noise a second time, and
    with it the shift that negative bins clipped to 0 cause; the percentile interval keeps that
    shift and the basic one over-corrects it, so either alone undercovers (bench/analytics.py
    measured 80–91% on the public data sets); their union covers 94–96%."""
    q_lo, q_hi = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    lo, hi = min(2 * est - q_hi, q_lo), max(2 * est - q_lo, q_hi)
    if value_range is not None:
        lo, hi = max(lo, value_range[0]), min(hi, value_range[1])
    return lo, hi
