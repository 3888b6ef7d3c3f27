"""The coordinator's side of federated analytics: send one query, sum the answers, store them.

A query run is a run of the same signed app with the run-config key `query` set (JSON, see
`common.analytics_math.Query`): every connected node gets one `query.analytics` message through
the SuperLink, decides it against its owner's contract, limits and budget, charges its ledger
(purpose "analytics") and answers with Gaussian-noised cell values and the noise std of each.
The coordinator checks each answer's identity and layout, sums the answers, derives every
cell's estimate and 95% interval (post-processing), and stores the query, each node's ε and the
result in `analytics_queries`; every step is in its signed audit log.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid
from pydantic import ValidationError

from common import wire
from common.analytics_math import Layout, Query, QueryError, finish, layout
from common.contract import Contract
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import digest_arrays, json_number
from server.coordinator_audit import CoordinatorAudit
from server.coordinator_settings import CoordinatorSettings
from server.fleet import Identities, RunFailed, query_nodes, wait_for_nodes
from server.query_store import QueryRecord, QueryStore, rows_csv
from server.run_settings import RunSettings
from server.spend_reports import SpendReports

log = logging.getLogger("flwr")
__all__ = ["QueryRecord", "QueryStore", "check_answer", "result_of", "rows_csv", "run_query"]


# ================================================================================================
# Pure parts: checking and summing answers
# ================================================================================================
def check_answer(answer: pb.Answered, lay: Layout) -> str | None:
    """None if `answer` has exactly the query's layout and the noise its σ implies."""
    if list(answer.value_names) != lay.value_names:
        return "the answer's values are not the query's"
    if [tuple(c.key) for c in answer.cells] != lay.keys:
        return "the answer's cells are not the query's"
    if not (math.isfinite(answer.noise_multiplier) and answer.noise_multiplier > 0):
        return "the answer names no noise multiplier"
    expected = lay.noise_std(answer.noise_multiplier)
    for c in answer.cells:
        if not np.allclose(list(c.noise_std), expected, rtol=1e-9, atol=0):
            return "the answer's noise does not match its noise multiplier"
    return None


def combine(lay: Layout, answers: list[pb.Answered]) -> tuple[np.ndarray, np.ndarray]:
    """(Σ values, Σ noise variances) over the answers, shape [cells, values]."""
    shape = (len(lay.keys), len(lay.value_names))
    values, variances = np.zeros(shape), np.zeros(shape)
    for a in answers:
        values += np.array([list(c.values) for c in a.cells], dtype=float).reshape(shape)
        variances += np.array([list(c.noise_std) for c in a.cells], dtype=float).reshape(shape) ** 2
    return values, variances


def result_of(query: Query, lay: Layout, answers: dict[str, pb.Answered]) -> dict[str, Any]:
    values, variances = combine(lay, list(answers.values()))
    return {
        "rows": finish(query, lay, values, variances) if answers else [],
        "interval": "95%",
        "value_names": lay.value_names,
        "cells": [list(k) for k in lay.keys],
        "participants": sorted(answers),
        "epsilon_per_node": {n: a.epsilon for n, a in sorted(answers.items())},
        "delta_per_node": {n: a.budget.delta for n, a in sorted(answers.items())},
        "noise_std_total": np.sqrt(variances[0]).tolist() if answers else [],
        "min_count": query.min_count,
    }


def parse_query(text: str) -> Query:
    try:
        return Query.model_validate_json(text)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in err.errors()
        )
        raise RunFailed(f"invalid query: {problems}") from None


# ================================================================================================
# The run
# ================================================================================================
def run_query(grid: Grid, context: Context) -> int:
    """Answer the run config's query over the connected nodes; returns the stored query's id."""
    settings = RunSettings.from_run_config(dict(context.run_config))
    coordinator = CoordinatorSettings.load()  # the coordinator host's own, never in a run config
    query = parse_query(settings.query)
    contract = coordinator.contract(settings.contract_hash)
    try:
        lay = layout(query, contract, max_bins=None)  # each node applies its owner's bin limit
    except QueryError as err:
        raise RunFailed(f"the query does not fit contract {contract.name}: {err}") from None
    run_id = str(context.run_id)
    store = QueryStore(coordinator.registry_url)
    reports = SpendReports(coordinator.registry_url)
    audit = CoordinatorAudit(
        coordinator.registry_url, coordinator.audit_key, run_id, coordinator.checkpoint_dir
    )
    ids = Identities.load(coordinator.registry_url, audit)
    spec = query.model_dump(mode="json")
    audit(
        "query.started", run=run_id, spec=spec, contract=contract.name, contract_hash=contract.hash
    )
    try:
        answers, nodes = _ask(grid, settings, contract, query, lay, ids, audit, reports, run_id)
        result = result_of(query, lay, answers)
        status = "answered" if answers else "failed"
        query_id = store.add(
            run_id=run_id,
            kind=query.kind,
            status=status,
            contract_name=contract.name,
            contract_hash=contract.hash,
            spec=spec,
            nodes=nodes,
            result=result,
        )
    except Exception as err:
        audit("query.failed", run=run_id, reason=f"{type(err).__name__}: {str(err)[:500]}")
        raise
    finally:
        store.close()
        reports.close()
    audit(
        "query.answered" if answers else "query.failed",
        subject=f"query:{query_id}",
        run=run_id,
        query_id=query_id,
        participants=result["participants"],
        epsilon_per_node={n: json_number(e) for n, e in result["epsilon_per_node"].items()},
        refused={
            n: v.get("reason", "")[:200] for n, v in nodes.items() if v["status"] != "answered"
        },
    )
    audit.checkpoint()
    log.info("ATOLL query id=%d run=%s status=%s nodes=%d", query_id, run_id, status, len(answers))
    if not answers:
        raise RunFailed("no node answered the query; see the refusals above")
    return query_id


def _ask(
    grid: Grid,
    settings: RunSettings,
    contract: Contract,
    query: Query,
    lay: Layout,
    ids: Identities,
    audit: CoordinatorAudit,
    reports: SpendReports,
    run_id: str,
) -> tuple[dict[str, pb.Answered], dict[str, dict[str, Any]]]:
    node_ids = wait_for_nodes(grid, settings.min_nodes, timeout=min(settings.round_timeout, 300))
    ids.learn(grid)
    config = wire.query_record(query.to_pb(contract.hash))
    replies, failed = query_nodes(grid, node_ids, wire.QUERY, config, settings.round_timeout)
    answers: dict[str, pb.Answered] = {}
    nodes: dict[str, dict[str, Any]] = {}
    for node, reply in replies.items():
        got = wire.answered_of(reply)
        if isinstance(got, pb.Refusal):
            failed[node] = f"[{got.code}] {got.message}"
        elif (why := ids.check(node, got.node_name)) is not None:
            failed[node] = f"[identity] {why}"
        elif (bad := check_answer(got, lay)) is not None:
            failed[node] = f"[malformed-reply] {bad}"
        else:
            name = ids.name(node)
            answers[name] = got
            values = np.array([list(c.values) for c in got.cells], dtype=float)
            nodes[name] = {
                "status": "answered",
                "node_id": node,
                "epsilon": got.epsilon,
                "epsilon_total": got.budget.epsilon_total,
                "delta": got.budget.delta,
                "noise_multiplier": got.noise_multiplier,
            }
            audit(
                "query.reply",
                run=run_id,
                node=name,
                node_id=node,
                epsilon=json_number(got.epsilon),
                noise_multiplier=json_number(got.noise_multiplier),
                values_sha256=digest_arrays({"values": values}),
            )
            reports.record(
                run_id=run_id,
                node=name,
                task=contract.task,
                status="participated",
                metrics={**wire.budget_metrics(got.budget), "epsilon": got.epsilon},
            )
    for node, why in failed.items():
        name = ids.name(node)
        log.warning("node %s did not answer the query: %s", name, why)
        nodes[name] = {"status": "refused", "node_id": node, "reason": why[:500]}
        audit("query.refused", run=run_id, node=name, node_id=node, reason=why[:500])
        reports.record(run_id=run_id, node=name, task=contract.task, status="refused", reason=why)
    return answers, nodes
