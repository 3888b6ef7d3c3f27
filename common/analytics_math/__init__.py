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
the union of its percentile and basic intervals, see `answers._bootstrap_interval`).

Modules, in the order a query flows: `query` (the spec a user writes, its kinds and limits) →
`layout` (cells, values and bounds from the query and the contract) → `noise` (ε ↔ σ of the one
Gaussian release) → `preview` (intervals before anything is spent) → `answers` (the
coordinator's estimates from the summed answers). A new query kind touches `query.KINDS`,
`layout._values` and `answers.finish`.
"""

from __future__ import annotations

from common.analytics_math.answers import (
    finish,
    quantiles_of,
    ratio,
)
from common.analytics_math.layout import (
    Layout,
    bin_edges,
    check_filters,
    group_keys,
    layout,
)
from common.analytics_math.noise import (
    analytic_delta,
    epsilon_of,
    sigma_for_epsilon,
)
from common.analytics_math.preview import (
    epsilon_for_width,
    expected_intervals,
    preview,
    ratio_half_width,
    width_at_unit_sigma,
)
from common.analytics_math.query import (
    DEFAULT_MIN_COUNT,
    DEFAULT_QUANTILE_BINS,
    FALSE,
    KINDS,
    MAX_GROUP_BY,
    MAX_QUANTILES,
    MAX_VALUES,
    TRUE,
    Z95,
    FilterSpec,
    Kind,
    Query,
    QueryError,
)

__all__ = [
    "Kind",
    "KINDS",
    "Z95",
    "TRUE",
    "FALSE",
    "MAX_GROUP_BY",
    "MAX_VALUES",
    "MAX_QUANTILES",
    "DEFAULT_QUANTILE_BINS",
    "DEFAULT_MIN_COUNT",
    "QueryError",
    "FilterSpec",
    "Query",
    "Layout",
    "group_keys",
    "bin_edges",
    "layout",
    "check_filters",
    "epsilon_of",
    "analytic_delta",
    "sigma_for_epsilon",
    "expected_intervals",
    "ratio_half_width",
    "width_at_unit_sigma",
    "epsilon_for_width",
    "preview",
    "ratio",
    "quantiles_of",
    "finish",
]
