"""A node's drift reference, released on finish: every feature's DP histogram of its data.

The run's settings ask for it (`drift-reference-noise` σ, `drift-bins`); admission keeps it only
if the owner allows purpose analytics (client.runtime.admission), and the run's reservation
plans it (privacy.dp.plan_run). `plan_reference` fixes the queries from public facts before the
charge; `release_reference` computes them on the node's rows after it. Only the noised,
concatenated counts and their σ leave (see common.drift_reference for the layout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from client.analytics_data import FieldTable
from client.node import NodeError
from client.runtime.analytics import AdmittedQuery, answer
from common.analytics_math import QueryError
from common.contract import Contract
from common.drift_reference import reference_layouts, reference_queries

Noise = Callable[[tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class ReferencePlan:
    """The reference's queries, each admitted at σ·√F; the ledger event is (σ, 1.0, 1)."""

    queries: list[AdmittedQuery]
    noise_multiplier: float  # σ of the whole release (what the ledger charges)

    @property
    def per_feature_noise(self) -> float:
        return self.queries[0].noise_multiplier if self.queries else 0.0

    @property
    def release(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, 1.0, 1)


def plan_reference(
    contract: Contract, *, noise_multiplier: float, bins: int, max_bins: int
) -> ReferencePlan:
    """The queries, from the contract and the settings alone (a refusal reveals no data)."""
    queries = reference_queries(contract, noise_multiplier=noise_multiplier, bins=bins)
    try:
        layouts = reference_layouts(contract, queries, max_bins=max_bins)
    except QueryError as err:
        raise NodeError("limit-drift-bins", f"drift reference: {err}"[:400]) from None
    return ReferencePlan(
        queries=[
            AdmittedQuery(query=q, layout=layouts[name], noise_multiplier=q.noise_multiplier)
            for name, q in queries.items()
        ],
        noise_multiplier=noise_multiplier,
    )


def release_reference(
    plan: ReferencePlan, table: FieldTable, contract: Contract, noise: Noise
) -> list[float]:
    """Every feature's noised histogram, concatenated in contract order (after the charge)."""
    out: list[float] = []
    for aq in plan.queries:
        values, _ = answer(aq, table, contract, noise)
        out.extend(float(v) for v in values.ravel())
    return out
