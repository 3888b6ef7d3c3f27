"""The drift reference's queries: one DP histogram per contract feature, from public facts only.

Both sides build them from the contract, the bins and one σ: a node that releases its reference
on finish (client.runtime.service) and the coordinator that reads it (server.drift), or that
asks for the same histograms later in a drift check. Each feature's histogram has L2
sensitivity 1 (one customer is in one bin) and gets noise σ·√F (F features), so the F releases
together are exactly one Gaussian release at σ: one ledger event (σ, 1.0, 1).
"""

from __future__ import annotations

import math

from common.analytics_math import Layout, Query, layout
from common.contract import Contract, NumericFeature


def reference_queries(
    contract: Contract, *, noise_multiplier: float, bins: int
) -> dict[str, Query]:
    """Every feature's histogram query (contract order), each at σ·√F; together: σ."""
    features = contract.features
    per_feature = noise_multiplier * math.sqrt(len(features))
    return {
        f.name: Query(
            kind="histogram",
            field=f.name,
            bins=bins if isinstance(f, NumericFeature) else 0,
            noise_multiplier=per_feature,
        )
        for f in features
    }


def reference_layouts(
    contract: Contract, queries: dict[str, Query], *, max_bins: int | None = None
) -> dict[str, Layout]:
    """Each query's layout (one cell, its bins): how a flat reference splits into features.
    Raises common.analytics_math.QueryError if a feature has more than `max_bins` bins (None:
    no limit — the coordinator reading a reference whose bins the nodes already admitted)."""
    return {name: layout(q, contract, max_bins=max_bins) for name, q in queries.items()}


def reference_size(layouts: dict[str, Layout]) -> int:
    """How many numbers a whole reference holds (every feature's bins, concatenated)."""
    return sum(lay.size for lay in layouts.values())
