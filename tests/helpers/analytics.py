"""Factories for analytics tests: silos of a CSV, and a query answered in process by the nodes'
own answer code and summed by the coordinator's, shaped like a stored query's record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client.analytics_data import FieldTable
from client.runtime.analytics import admit_query, answer, answered
from common.analytics_math import Query
from common.contract import Contract
from privacy.ledger import Policy
from server.analytics import check_answer, result_of

Noise = Callable[[tuple[int, ...]], np.ndarray]


def split_csv(frame: pd.DataFrame, column: str, out: Path) -> dict[str, Path]:
    """One CSV per value of `column` (sorted), named silo-1, silo-2, …"""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (_value, part) in enumerate(sorted(frame.groupby(column), key=lambda kv: kv[0])):
        paths[f"silo-{i + 1}"] = out / f"silo-{i + 1}.csv"
        part.to_csv(paths[f"silo-{i + 1}"], index=False)
    return paths


def answer_in_process(
    query: Query, contract: Contract, tables: dict[str, FieldTable], noise: Noise, qid: int = 0
) -> dict[str, Any]:
    """Each node admits and answers `query` (noise injected); the coordinator checks and sums."""
    aq = admit_query(query.to_pb(contract.hash), contract, Policy(cap_epsilon=1e6))
    answers = {}
    for name, table in tables.items():
        a = answered(aq, *answer(aq, table, contract, noise), name)
        assert check_answer(a, aq.layout) is None
        answers[name] = a
    return {
        "id": qid,
        "status": "answered",
        "nodes": {n: {"status": "answered"} for n in answers},
        "result": result_of(aq.query, aq.layout, answers),
    }
