"""Accuracy before spending: the intervals a query will have at a σ, and the σ (ε) a width needs."""

from __future__ import annotations

import math
from typing import Any

from common.analytics_math.layout import Layout, layout
from common.analytics_math.noise import epsilon_of, sigma_for_epsilon
from common.analytics_math.query import Z95, Query
from common.contract import Contract


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
