"""A node's answer to an analytics query: admission (before data), then noised cell values.

`admit_query` checks the coordinator's spec against the owner's contract and limits and fixes
the noise — it depends only on the spec, the contract and the policy, never on data, so a
refusal reveals nothing about any customer. `exact_cells` computes the per-cell values on the
node's validated rows (they never leave this module unnoised); `answer` adds Gaussian noise of
std σ·Δ·b_j to each value (see `common.analytics_math`). The caller (NodeService.query) charges
the ledger event (σ, 1.0, 1) before calling `answer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from client.analytics_data import FieldTable
from client.node import NodeError
from common.analytics_math import (
    FALSE,
    TRUE,
    Layout,
    Query,
    QueryError,
    layout,
    sigma_for_epsilon,
)
from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature
from common.encoding import OTHER
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.ledger import Policy

PURPOSE = "analytics"
Noise = Callable[[tuple[int, ...]], np.ndarray]  # standard normal draws of a shape


@dataclass(frozen=True)
class AdmittedQuery:
    query: Query
    layout: Layout
    noise_multiplier: float

    @property
    def release(self) -> tuple[float, float, int]:
        """The ledger event: one Gaussian release at sampling rate 1."""
        return (self.noise_multiplier, 1.0, 1)

    def audit_details(self) -> dict[str, Any]:
        """What the query asked (public: the spec is the coordinator's, keys are the contract's)."""
        q = self.query
        return {
            "kind": q.kind,
            "field": q.field[:100],
            "group_by": [g[:100] for g in q.group_by],
            "filters": [f.model_dump(exclude_none=True) for f in q.filters],
            "bins": q.bins,
            "quantiles": list(q.quantiles),
            "cells": len(self.layout.keys),
            "values": self.layout.size,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.layout.sensitivity,
        }


def _refuse(code: str, message: str) -> NodeError:
    return NodeError(code, message)


def admit_query(spec: pb.QuerySpec, contract: Contract, policy: Policy) -> AdmittedQuery:
    """The query this node will answer, with its noise; or a refusal naming the check."""
    if not spec.contract_hash:
        raise _refuse("contract-hash-missing", "the query carries no contract hash")
    if spec.contract_hash != contract.hash:
        raise _refuse(
            "contract-mismatch",
            f"this node holds contract {contract.name} v{contract.version} (hash "
            f"{contract.hash[:12]}) but the query uses hash {spec.contract_hash[:12]}",
        )
    try:
        query = Query.from_pb(spec)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in err.errors()
        )
        raise _refuse("query-invalid", problems[:400]) from None
    limits = policy.limits
    try:
        lay = layout(query, contract, max_bins=limits.max_eval_bins)
    except QueryError as err:
        raise _refuse(err.code, str(err)[:400]) from None
    if query.epsilon > 0:
        sigma = max(sigma_for_epsilon(query.epsilon, policy.delta), limits.min_noise_multiplier)
    else:
        sigma = query.noise_multiplier
    if not (math.isfinite(sigma) and sigma >= limits.min_noise_multiplier):
        raise _refuse(
            "limit-noise",
            f"noise-multiplier {sigma!r} is below this node's minimum "
            f"{limits.min_noise_multiplier:g}",
        )
    return AdmittedQuery(query=query, layout=lay, noise_multiplier=float(sigma))


# ================================================================================================
# On the data (after the charge)
# ================================================================================================
def _codes(table: FieldTable, contract: Contract, name: str) -> tuple[np.ndarray, list[str]]:
    """A grouping field's per-row position in its public key list."""
    f = contract.feature(name)
    if isinstance(f, CategoricalFeature):
        return table.categorical[name], [*f.vocabulary, OTHER]
    return table.binary[name].astype(np.int64), [FALSE, TRUE]


def _mask(q: Query, table: FieldTable, contract: Contract) -> np.ndarray:
    keep = np.ones(table.rows, dtype=bool)
    for flt in q.filters:
        if flt.field == contract.label.column:
            truth = table.label
            keep &= np.isin(np.where(truth, TRUE, FALSE), flt.values or [])
            continue
        f = contract.feature(flt.field)
        if isinstance(f, NumericFeature):
            v = table.numeric[f.name]
            if flt.low is not None:
                keep &= v >= flt.low
            if flt.high is not None:
                keep &= v <= flt.high
        else:
            codes, keys = _codes(table, contract, f.name)
            wanted = [keys.index(v) for v in flt.values or []]
            keep &= np.isin(codes, wanted)
    return keep


def exact_cells(aq: AdmittedQuery, table: FieldTable, contract: Contract) -> np.ndarray:
    """The exact per-cell values, shape [cells, values]. Never leaves the node unnoised."""
    q, lay = aq.query, aq.layout
    keep = _mask(q, table, contract)
    cell = np.zeros(table.rows, dtype=np.int64)
    for name in q.group_by:
        codes, keys = _codes(table, contract, name)
        cell = cell * len(keys) + codes
    cell, n_cells, n_values = cell[keep], len(lay.keys), len(lay.value_names)
    out = np.zeros((n_cells, n_values), dtype=np.float64)
    count = np.bincount(cell, minlength=n_cells).astype(np.float64)
    if q.kind == "count":
        out[:, 0] = count
    elif q.kind == "rate":
        if q.field == contract.label.column:
            positive = table.label[keep]
        else:
            positive = table.binary[q.field][keep]
        out[:, 0] = np.bincount(cell, weights=positive.astype(np.float64), minlength=n_cells)
        out[:, 1] = count
    elif q.kind in ("sum", "mean"):
        v = table.numeric[q.field][keep] - lay.center
        out[:, 0] = np.bincount(cell, weights=v, minlength=n_cells)
        if q.kind == "mean":
            out[:, 1] = count
    else:  # histogram, quantile: one bin per row
        f = contract.feature(q.field)
        if isinstance(f, NumericFeature):
            assert lay.edges is not None
            inner = np.asarray(lay.edges[1:-1])
            bins = np.searchsorted(inner, table.numeric[f.name][keep], side="right")
        elif isinstance(f, CategoricalFeature | BinaryFeature):
            bins, _ = _codes(table, contract, f.name)
            bins = bins[keep]
        flat = np.bincount(cell * n_values + bins, minlength=n_cells * n_values)
        out[:] = flat.reshape(n_cells, n_values)
    return out


def answer(
    aq: AdmittedQuery,
    table: FieldTable,
    contract: Contract,
    noise: Noise,
) -> tuple[np.ndarray, np.ndarray]:
    """(noised values, noise std per value), both [cells, values]: the only thing that leaves."""
    exact = exact_cells(aq, table, contract)
    std = np.broadcast_to(np.asarray(aq.layout.noise_std(aq.noise_multiplier)), exact.shape)
    return exact + std * noise(exact.shape), np.array(std)


def answered(aq: AdmittedQuery, values: np.ndarray, std: np.ndarray, node_name: str) -> pb.Answered:
    return pb.Answered(
        node_name=node_name,
        value_names=aq.layout.value_names,
        cells=[
            pb.Cell(key=list(key), values=values[i].tolist(), noise_std=std[i].tolist())
            for i, key in enumerate(aq.layout.keys)
        ],
        noise_multiplier=aq.noise_multiplier,
        sensitivity=aq.layout.sensitivity,
    )
