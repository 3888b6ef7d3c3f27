"""Flower ServerApp: roll call → N rounds of DP federated training and evaluation → publish.

The coordinator never sees a record: it sees weights, per-node aggregate metrics and counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.contract import Contract, load_contract
from common.encoding import Encoder
from common.metrics import histogram_metrics
from common.model import build_model, weights_to_bytes
from privacy.audit import json_number
from server.coordinator_audit import CoordinatorAudit
from server.registry import Registry
from server.run_settings import RunSettings
from server.spend_reports import SpendReports
from server.strategies import make_strategy

log = logging.getLogger("flwr")
app = ServerApp()


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() > deadline:
            return nodes
        time.sleep(1.0)


class AdmittedGrid:
    """The run's grid restricted to nodes that passed the roll call (contract and budget)."""

    def __init__(self, grid: Grid, admitted: set[int]) -> None:
        self._grid = grid
        self.admitted = admitted

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n in self.admitted]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def query_nodes(
    grid: Grid, nodes: list[int], kind: str, config: dict[str, Any], timeout: float
) -> tuple[dict[int, tuple[dict, dict]], dict[int, str]]:
    """Send a named query to `nodes`; returns ({node: (info, metrics)}, {node: error reason})."""
    record = RecordDict({"config": ConfigRecord(config)})
    msgs = [
        Message(record, dst_node_id=n, message_type=f"{MessageType.QUERY}.{kind}") for n in nodes
    ]
    ok: dict[int, tuple[dict, dict]] = {}
    failed: dict[int, str] = {}
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    for reply in replies:
        node = reply.metadata.src_node_id
        if node not in nodes:  # e.g. an error the SuperLink raised for an unreachable node
            continue
        if reply.has_error():
            failed[node] = reply.error.reason or f"error code {reply.error.code} (no reason)"
        else:
            ok[node] = (dict(reply.content["info"]), dict(reply.content["metrics"]))
    for node in set(nodes) - set(ok) - set(failed):
        failed[node] = f"no reply within {timeout:.0f} s"
    return ok, failed


def roll_call(
    grid: Grid, contract: Contract, settings: RunSettings, reports: SpendReports, run_id: str
) -> tuple[dict[int, dict], dict[int, str]]:
    """Ask every connected node to join: it checks contract and budget before reading data."""
    nodes = wait_for_nodes(grid, settings.min_nodes, timeout=min(settings.round_timeout, 300))
    joined, refused = query_nodes(
        grid, nodes, "rollcall", settings.node_config(contract.hash), settings.round_timeout
    )
    roster = {
        node: {"name": str(info["node-name"]), **metrics}
        for node, (info, metrics) in joined.items()
    }
    for node, why in refused.items():
        log.warning("node %s did not join: %s", node, why)
        reports.record(
            run_id=run_id, node=f"node-id:{node}", task=contract.task, status="refused", reason=why
        )
    if len(roster) < settings.min_nodes:
        raise RunFailed(
            f"only {len(roster)} node(s) joined (min-nodes={settings.min_nodes}); "
            f"{len(refused)} refused — see the reasons above, start more nodes or lower min-nodes"
        )
    log.info(
        "roll call: %s",
        ", ".join(
            f"{v['name']} ({int(v['train-examples'])} train rows, run ε≤{v['planned-epsilon']:.2f})"
            for v in roster.values()
        ),
    )
    return roster, refused


def round_summary(rnd: int, evals: dict[int, dict], roster: dict[int, dict]) -> dict[str, Any]:
    """Global metrics of one round from per-node noised histograms (pooled → global AUC)."""
    if not evals:
        return {"round": rnd, "nodes": {}}
    pos = np.sum([np.asarray(m["hist-pos"]) for m in evals.values()], axis=0)
    neg = np.sum([np.asarray(m["hist-neg"]) for m in evals.values()], axis=0)
    g = histogram_metrics(pos, neg)
    return {
        "round": rnd,
        "global": {"roc_auc": g["roc_auc"], "log_loss": g["log_loss"], "examples": round(g["n"])},
        "nodes": {
            roster.get(node, {}).get("name", str(node)): {
                k: float(v) for k, v in m.items() if not k.startswith("hist-")
            }
            for node, m in evals.items()
        },
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(dict(context.run_config))
    contract = load_contract(settings.contract_path)
    registry = Registry(settings.registry_url)  # open (and migrate) before any node spends
    reports = SpendReports(settings.registry_url)
    run_id = str(context.run_id)
    audit = CoordinatorAudit(settings.registry_url, settings.audit_key, run_id)
    audit(
        "run.started",
        contract=contract.name,
        contract_hash=contract.hash,
        config=settings.model_dump(mode="json", exclude={"registry_url", "audit_key"}),
    )
    try:
        roster, refused = roll_call(grid, contract, settings, reports, run_id)
        audit.names = {node: info["name"] for node, info in roster.items()}
        for node, info in roster.items():
            audit(
                "node.joined",
                run=run_id,
                node=info["name"],
                node_id=node,
                train_examples=int(info["train-examples"]),
                planned_epsilon=json_number(float(info["planned-epsilon"])),
            )
        for node, why in refused.items():
            audit("node.refused", run=run_id, node_id=node, reason=why[:500])
        try:
            card = _train_and_publish(
                grid, context, settings, contract, registry, roster, refused, audit
            )
        finally:
            _finish(grid, settings, contract, reports, run_id, roster)
    except Exception as err:
        audit("run.failed", run=run_id, reason=f"{type(err).__name__}: {str(err)[:500]}")
        raise
    audit(
        "model.published",
        subject=f"model:{card.name}/v{card.version}",
        run=run_id,
        name=card.name,
        version=card.version,
        weights_sha256=card.weights_sha256,
        contract_hash=card.contract_hash,
    )
    audit("run.finished", run=run_id, participants=sorted(p.name for p in card.participants))
    audit.checkpoint()
    log.info(
        "ATOLL published model=%s version=%s run=%s global_auc=%.4f",
        card.name,
        card.version,
        run_id,
        card.metrics["final"].get("roc_auc", float("nan")),
    )


def _finish(
    grid: Grid,
    settings: RunSettings,
    contract: Contract,
    reports: SpendReports,
    run_id: str,
    roster: dict[int, dict],
) -> None:
    """Tell every admitted node the run is over (they release unspent budget); record spend."""
    done, failed = query_nodes(
        grid, list(roster), "finish", {}, timeout=min(settings.round_timeout, 120)
    )
    for info, metrics in done.values():
        reports.record(
            run_id=run_id,
            node=str(info["node-name"]),
            task=contract.task,
            status="participated",
            metrics=metrics,
        )
    for node, why in failed.items():
        name = roster.get(node, {}).get("name", f"node-id:{node}")
        reports.record(run_id=run_id, node=name, task=contract.task, status="failed", reason=why)
        log.warning("node %s did not confirm the end of the run: %s", name, why)


def _train_and_publish(
    grid: Grid,
    context: Context,
    settings: RunSettings,
    contract: Contract,
    registry: Registry,
    roster: dict[int, dict],
    refused: dict[int, str],
    audit: CoordinatorAudit,
) -> Any:
    torch.manual_seed(settings.seed)
    n_features = Encoder(contract).n_features
    model = build_model(settings.model, n_features)
    strategy = make_strategy(
        settings.strategy,
        proximal_mu=settings.proximal_mu,
        trim_beta=settings.trim_beta,
        evaluate=settings.eval_noise > 0,
    )
    strategy.on_reply = audit.reply
    node_cfg = ConfigRecord(settings.node_config(contract.hash))
    result = strategy.start(
        grid=AdmittedGrid(grid, set(roster)),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.rounds,
        timeout=settings.round_timeout,
        train_config=node_cfg,
        evaluate_config=node_cfg,
    )
    if not strategy.train_by_node:
        raise RunFailed("no round produced a model; see node errors above")

    rounds = [
        round_summary(r, strategy.eval_by_node.get(r, {}), roster)
        for r in range(1, settings.rounds + 1)
    ]
    epsilon: dict[str, float] = {}
    participants: dict[str, dict[str, Any]] = {}
    for by_node in (strategy.train_by_node, strategy.eval_by_node):
        for rnd in sorted(by_node):
            for node, m in by_node[rnd].items():
                name = roster.get(node, {}).get("name", str(node))
                epsilon[name] = max(epsilon.get(name, 0.0), float(m["epsilon"]))
    for rnd in sorted(strategy.train_by_node):
        for node, m in strategy.train_by_node[rnd].items():
            name = roster.get(node, {}).get("name", str(node))
            participants[name] = {
                "name": name,
                "node_id": node,
                "train_examples": int(
                    roster.get(node, {}).get("train-examples", m["num-examples"])
                ),
                "test_examples": int(roster.get(node, {}).get("test-examples", 0)),
                "rounds": participants.get(name, {}).get("rounds", 0) + 1,
                "noise_multiplier": float(m["noise-multiplier"]),
                "sample_rate": float(m["sample-rate"]),
            }
    final: dict[str, Any] = next((r["global"] for r in reversed(rounds) if "global" in r), {})
    return registry.publish(
        name=settings.model_name or contract.name,
        task=contract.task,
        contract=contract,
        model_kind=settings.model,
        n_features=n_features,
        weights=weights_to_bytes(result.arrays.to_torch_state_dict()),
        metrics={"rounds": rounds, "final": final},
        participants=list(participants.values()),
        privacy={
            "delta": settings.delta,
            "epsilon_per_node": epsilon,
            "mechanism": "DP-SGD (Opacus, Poisson sampling) + Gaussian-noised evaluation "
            "histograms; min(RDP, PLD) accountant over each node's whole ledger",
            "noise_multiplier": settings.noise_multiplier if settings.target_epsilon <= 0 else None,
            "target_epsilon": settings.target_epsilon or None,
            "eval_noise": settings.eval_noise,
            "max_grad_norm": settings.max_grad_norm,
            "sample_rate": settings.sample_rate,
        },
        run={
            "run_id": str(context.run_id),
            "strategy": settings.strategy,
            "rounds": settings.rounds,
            "config": settings.model_dump(mode="json", exclude={"registry_url"}),
            "refused_nodes": {str(k): v for k, v in refused.items()},
            "failures_by_round": {str(k): v for k, v in strategy.failures.items() if v},
        },
    )
