"""Layout: a query's cells, released values and their bounds — from the query and the contract
alone (never from data), so node and coordinator derive the same one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.analytics_math.query import (
    DEFAULT_QUANTILE_BINS,
    FALSE,
    MAX_VALUES,
    TRUE,
    Query,
    QueryError,
)
from common.contract import BinaryFeature, CategoricalFeature, Contract, Feature, NumericFeature
from common.encoding import OTHER


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


def _feature(contract: Contract, name: str, code: str, message: str) -> Feature:
    """The contract's feature `name`, or a QueryError(`code`, `message`) if it has none."""
    try:
        return contract.feature(name)
    except KeyError:
        raise QueryError(code, message) from None


def group_keys(contract: Contract, name: str) -> list[str]:
    """The public keys of a group-by feature: its vocabulary and `<other>`, or false/true."""
    f = _feature(contract, name, "query-field", f"group_by '{name[:60]}' is not a contract feature")
    if isinstance(f, CategoricalFeature):
        return [*f.vocabulary, OTHER]
    if isinstance(f, BinaryFeature):
        return [FALSE, TRUE]
    raise QueryError(
        "query-group-by", f"group_by '{name}' is numeric; group by categorical or binary features"
    )


def _numeric(contract: Contract, name: str, kind: str) -> NumericFeature:
    f = _feature(
        contract, name, "query-field", f"{kind} field '{name[:60]}' is not a contract feature"
    )
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
            f = _feature(
                contract,
                name,
                "query-field",
                f"rate field '{name[:60]}' is neither the label nor a feature",
            )
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
        f = _feature(
            contract, name, "query-field", f"{kind} field '{name[:60]}' is not a contract feature"
        )
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
            f = _feature(
                contract,
                flt.field,
                "query-filter",
                f"filter field '{flt.field[:60]}' is not a contract field",
            )
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
