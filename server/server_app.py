"""Flower ServerApp: roll call → N rounds of DP federated training and evaluation → publish.

The coordinator never sees a record: it sees weights, per-node aggregate metrics and counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from common import wire
from common.contract import Contract, load_contract
from common.encoding import Encoder
from common.metrics import histogram_metrics
from common.model import build_model, weights_to_bytes
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import json_number
from server.coordinator_audit import CoordinatorAudit
from server.node_names import NodeNames
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
    grid: Grid, nodes: list[int], kind: str, config: ConfigRecord, timeout: float
) -> tuple[dict[int, Message], dict[int, str]]:
    """Send one query to `nodes`; returns ({node: reply}, {node: why there is none})."""
    msgs = [Message(wire.request(config), dst_node_id=n, message_type=kind) for n in nodes]
    replies: dict[int, Message] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if node in nodes:  # else e.g. an error the SuperLink raised for an unreachable node
            replies[node] = reply
    missing = {node: f"no reply within {timeout:.0f} s" for node in set(nodes) - set(replies)}
    return replies, missing


class Identities:
    """Who each node is: the name its SuperLink node id was registered under, never a claim."""

    def __init__(self, registered: dict[int, str], audit: CoordinatorAudit) -> None:
        self.registered = registered
        self.audit = audit

    def name(self, node: int) -> str:
        return self.registered.get(node, f"node-id:{node}")

    def check(self, node: int, claimed: str) -> str | None:
        """None if the reply's claimed name is the registered one; else the refusal reason."""
        if node in self.registered and claimed == self.registered[node]:
            return None
        why = (
            f"node id {node} is registered as '{self.registered[node]}' but its reply claims "
            f"'{claimed[:60]}'"
            if node in self.registered
            else f"node id {node} is not registered with this coordinator"
        )
        self.audit("node.identity-refused", node_id=node, claimed=claimed[:100], reason=why)
        return why


def roll_call(
    grid: Grid,
    contract: Contract,
    settings: RunSettings,
    reports: SpendReports,
    run_id: str,
    ids: Identities,
) -> tuple[dict[int, pb.Joined], dict[int, str]]:
    """Ask every connected node to join: it checks contract and budget before reading data."""
    nodes = wait_for_nodes(grid, settings.min_nodes, timeout=min(settings.round_timeout, 300))
    replies, refused = query_nodes(
        grid, nodes, wire.ROLLCALL, node_settings(settings, contract, 1), settings.round_timeout
    )
    roster: dict[int, pb.Joined] = {}
    for node, reply in replies.items():
        joined = wire.joined_of(reply)
        if isinstance(joined, pb.Refusal):
            refused[node] = f"[{joined.code}] {joined.message}"
        elif (why := ids.check(node, joined.node_name)) is not None:
            refused[node] = f"[identity] {why}"
        else:
            roster[node] = joined
    for node, why in refused.items():
        log.warning("node %s did not join: %s", ids.name(node), why)
        reports.record(
            run_id=run_id, node=ids.name(node), task=contract.task, status="refused", reason=why
        )
    if len(roster) < settings.min_nodes:
        raise RunFailed(
            f"only {len(roster)} node(s) joined (min-nodes={settings.min_nodes}); "
            f"{len(refused)} refused — see the reasons above, start more nodes or lower min-nodes"
        )
    log.info(
        "roll call: %s",
        ", ".join(
            f"{ids.name(n)} ({j.size_bucket} train rows, run ε≤{j.planned_epsilon:.2f})"
            for n, j in roster.items()
        ),
    )
    return roster, refused


def node_settings(settings: RunSettings, contract: Contract, server_round: int) -> ConfigRecord:
    return wire.settings_record(
        {**settings.node_config(contract.hash), "server-round": server_round}
    )


def round_summary(
    rnd: int, evals: dict[int, pb.Evaluated], ids: Identities
) -> dict[str, Any]:
    """Global metrics of one round from per-node noised histograms (pooled → global AUC)."""
    if not evals:
        return {"round": rnd, "nodes": {}}
    pos = np.sum([np.asarray(e.hist_pos) for e in evals.values()], axis=0)
    neg = np.sum([np.asarray(e.hist_neg) for e in evals.values()], axis=0)
    g = histogram_metrics(pos, neg)
    return {
        "round": rnd,
        "global": {"roc_auc": g["roc_auc"], "log_loss": g["log_loss"], "examples": round(g["n"])},
        "nodes": {
            ids.name(node): {
                **{k: float(v) for k, v in histogram_metrics(
                    np.asarray(e.hist_pos), np.asarray(e.hist_neg)
                ).items()},
                "epsilon": e.budget.epsilon_run,
            }
            for node, e in evals.items()
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
    names = NodeNames(settings.registry_url)
    ids = Identities(names.all(), audit)
    names.close()
    audit.names = ids.registered
    audit(
        "run.started",
        contract=contract.name,
        contract_hash=contract.hash,
        config=settings.model_dump(mode="json", exclude={"registry_url", "audit_key"}),
    )
    try:
        roster, refused = roll_call(grid, contract, settings, reports, run_id, ids)
        for node, joined in roster.items():
            audit(
                "node.joined",
                run=run_id,
                node=ids.name(node),
                node_id=node,
                size_bucket=joined.size_bucket,
                planned_epsilon=json_number(joined.planned_epsilon),
            )
        for node, why in refused.items():
            audit("node.refused", run=run_id, node=ids.name(node), node_id=node, reason=why[:500])
        try:
            card = _train_and_publish(
                grid, context, settings, contract, registry, roster, refused, audit, ids
            )
        finally:
            _finish(grid, settings, contract, reports, run_id, roster, ids)
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
    roster: dict[int, pb.Joined],
    ids: Identities,
) -> None:
    """Tell every admitted node the run is over (they release unspent budget); record spend."""
    replies, failed = query_nodes(
        grid, list(roster), wire.FINISH, ConfigRecord(), timeout=min(settings.round_timeout, 120)
    )
    for node, reply in replies.items():
        finished = wire.finished_of(reply)
        if isinstance(finished, pb.Refusal):
            failed[node] = f"[{finished.code}] {finished.message}"
        elif (why := ids.check(node, finished.node_name)) is not None:
            failed[node] = f"[identity] {why}"
        else:
            reports.record(
                run_id=run_id,
                node=ids.name(node),
                task=contract.task,
                status="participated",
                metrics=wire.budget_metrics(finished.budget),
            )
    for node, why in failed.items():
        name = ids.name(node)
        reports.record(run_id=run_id, node=name, task=contract.task, status="failed", reason=why)
        log.warning("node %s did not confirm the end of the run: %s", name, why)


def _train_and_publish(
    grid: Grid,
    context: Context,
    settings: RunSettings,
    contract: Contract,
    registry: Registry,
    roster: dict[int, pb.Joined],
    refused: dict[int, str],
    audit: CoordinatorAudit,
    ids: Identities,
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
    node_cfg = node_settings(settings, contract, 1)  # the strategy sets server-round per round
    result = strategy.start(
        grid=AdmittedGrid(grid, set(roster)),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.rounds,
        timeout=settings.round_timeout,
        train_config=node_cfg,
        evaluate_config=node_cfg,
    )
    if not any(strategy.train_by_node.values()):
        raise RunFailed("no round produced a model; see node refusals above")

    rounds = [
        round_summary(r, strategy.eval_by_node.get(r, {}), ids)
        for r in range(1, settings.rounds + 1)
    ]
    epsilon: dict[str, float] = {}
    participants: dict[str, dict[str, Any]] = {}
    releases: list[tuple[int, pb.Budget]] = [
        (node, rel.budget)
        for by_node in (strategy.train_by_node, strategy.eval_by_node)
        for rnd in sorted(by_node)
        for node, rel in by_node[rnd].items()
    ]
    for node, budget in releases:
        name = ids.name(node)
        epsilon[name] = max(epsilon.get(name, 0.0), float(budget.epsilon_run))
    for rnd in sorted(strategy.train_by_node):
        for node, trained in strategy.train_by_node[rnd].items():
            name = ids.name(node)
            participants[name] = {
                "name": name,
                "node_id": node,
                "size_bucket": roster[node].size_bucket if node in roster else None,
                "rounds": participants.get(name, {}).get("rounds", 0) + 1,
                "noise_multiplier": float(trained.noise_multiplier),
                "sample_rate": float(trained.sample_rate),
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
            "epsilon_covers": "every release each node made in this run: its DP-SGD rounds and "
            "its noised evaluation histograms. Nothing else leaves a node: no exact counts or "
            "losses; sizes are public ranges; aggregation weights are equal",
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
            "refused_nodes": {ids.name(k): v for k, v in refused.items()},
            "failures_by_round": {
                str(r): {ids.name(n): why for n, why in f.items()}
                for r, f in strategy.failures.items()
                if f
            },
        },
    )
