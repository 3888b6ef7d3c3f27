"""Flower ServerApp: roll call → N rounds of DP federated training → finish → publish.

The coordinator never sees a record: it sees noised weights and noised evaluation histograms,
each release charged to its node's own ledger. One message per node per round: a node
evaluates the incoming global weights inside its train request, and the final model on finish.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from common import wire
from common.contract import Contract
from common.encoding import Encoder
from common.estimation import Report, estimate, pool
from common.model import model_for, weights_to_bytes
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import json_number
from privacy.dp import clip_norm, describe_clip
from server.analytics import run_query
from server.calibration import publish_calibrated
from server.coordinator_audit import CoordinatorAudit
from server.coordinator_settings import CoordinatorSettings
from server.drift import DriftStore, pool_finish_references, store_finish_reference
from server.fleet import FastGrid, Identities, RunFailed, finish_nodes, node_settings, roll_call
from server.registry import Registry
from server.registry_signing import load_publishing_key
from server.run_settings import RunSettings
from server.spend_reports import SpendReports
from server.strategies import make_strategy

log = logging.getLogger("flwr")
app = ServerApp()


ROUND_DRAWS = 200  # bootstrap draws per per-round estimate (the final one uses the default)


def _estimates(evals: list[pb.Evaluated], noise: float) -> Report | None:
    """The raw model's metrics from noised histograms (unclipped, with 95 % intervals)."""
    pooled = pool((e.hist_pos, e.hist_neg, float(e.noise or noise)) for e in evals)
    if pooled is None or pooled.noise_var <= 0:
        return None
    return estimate(pooled, draws=ROUND_DRAWS)


def _plain(report: Report) -> dict[str, Any]:
    """Floats for existing readers (roc_auc, log_loss, brier) and each one's interval."""
    return {
        "roc_auc": report.value("roc_auc"),
        "log_loss": report.value("log_loss"),
        "brier": report.value("brier"),
        "ci95": {k: list(report.metrics[k].ci95) for k in ("roc_auc", "log_loss", "brier")},
    }


def round_summary(
    rnd: int, evals: dict[int, pb.Evaluated], ids: Identities, noise: float = 0.0
) -> dict[str, Any]:
    """Metrics of one round's global model from the nodes' noised histograms.

    Global: pooled over the nodes; per node: its own release. Nearly unbiased estimates with 95 %
    intervals (`common.estimation`: unclipped counts, known noise variance, bootstrap), of the
    model as trained in that round (the published model's calibrated numbers are
    `metrics.final`). `noise` is the run's eval-noise, used if a release does not state its own.
    """
    if not evals:
        return {"round": rnd, "nodes": {}}
    out: dict[str, Any] = {"round": rnd, "nodes": {}}
    pooled = _estimates(list(evals.values()), noise)
    if pooled is not None:
        out["global"] = {**_plain(pooled), "examples": round(pooled.examples)}
    for node, e in evals.items():
        own = _estimates([e], noise)
        out["nodes"][ids.name(node)] = {
            **(_plain(own) if own is not None else {}),
            "n": own.examples if own is not None else 0.0,
            "positives": own.positives if own is not None else 0.0,
            "epsilon": e.budget.epsilon_run,
        }
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    if context.run_config.get(RunSettings.key("query")):  # an analytics query, not training
        run_query(grid, context)
        return
    settings = RunSettings.from_run_config(dict(context.run_config))
    coordinator = CoordinatorSettings.load()  # the coordinator host's own, never in a run config
    contract = coordinator.contract(settings.contract_hash)  # resolved on this host, by hash
    registry = Registry(  # open (and migrate) before any node spends; every row it writes is signed
        coordinator.registry_url, signer=load_publishing_key(coordinator.publishing_key)
    )
    reports = SpendReports(coordinator.registry_url)
    run_id = str(context.run_id)
    audit = CoordinatorAudit(
        coordinator.registry_url, coordinator.audit_key, run_id, coordinator.checkpoint_dir
    )
    ids = Identities.load(coordinator.registry_url, audit)
    audit(
        "run.started",
        contract=contract.name,
        contract_hash=contract.hash,
        config=settings.model_dump(mode="json"),
    )
    roster: dict[int, pb.Joined] = {}
    finished = False
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
        result, strategy = _train(grid, settings, contract, roster, audit)
        finals = finish_nodes(grid, settings, contract, reports, run_id, roster, ids, result.arrays)
        finished = True
        strategy.eval_by_node[settings.rounds].update(
            {n: f.final for n, f in finals.items() if wire.has_histograms(f.final)}
        )
        card = _publish(
            context, settings, contract, registry, roster, refused, ids, result, strategy
        )
        _drift_reference(coordinator.registry_url, settings, contract, card, finals, ids, audit)
    except Exception as err:
        if roster and not finished:  # nodes release what the run reserved but did not spend
            finish_nodes(grid, settings, contract, reports, run_id, roster, ids, None)
        audit("run.failed", run=run_id, reason=f"{type(err).__name__}: {str(err)[:500]}")
        audit.checkpoint()  # a failed run's trail is sealed like a published one's
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
    auc = card.metrics["final"].get("roc_auc")
    log.info(  # one line the CLI watches for: it must never fail to format
        "ATOLL published model=%s version=%s run=%s global_auc=%s",
        card.name,
        card.version,
        run_id,
        f"{auc:.4f}" if isinstance(auc, int | float) else "n/a",
    )


def _drift_reference(
    registry_url: str,
    settings: RunSettings,
    contract: Contract,
    card: Any,
    finals: dict[int, pb.Finished],
    ids: Identities,
    audit: CoordinatorAudit,
) -> None:
    """Store the nodes' finish-time drift references as the published model's (if any sent)."""
    if settings.drift_reference_noise <= 0:
        return
    histograms, problems = pool_finish_references(
        contract,
        noise_multiplier=settings.drift_reference_noise,
        bins=settings.drift_bins,
        delta=settings.delta,
        finished={ids.name(n): f for n, f in finals.items()},
    )
    for name, why in problems.items():
        audit("drift.reference_refused", node=name, reason=why[:300])
    if not histograms:
        log.info("no node released a drift reference (their owners do not allow analytics)")
        return
    store = DriftStore(registry_url)
    try:
        rid = store_finish_reference(
            store,
            model=(card.name, card.version),
            contract=contract,
            histograms=histograms,
            noise_multiplier=settings.drift_reference_noise,
            bins=settings.drift_bins,
            delta=settings.delta,
        )
    finally:
        store.close()
    first = next(iter(histograms.values()))
    audit(
        "drift.reference",
        subject=f"model:{card.name}/v{card.version}",
        reference_id=rid,
        participants=first["participants"],
        features=len(histograms),
    )


def _train(
    grid: Grid,
    settings: RunSettings,
    contract: Contract,
    roster: dict[int, pb.Joined],
    audit: CoordinatorAudit,
) -> tuple[Result, Any]:
    """The rounds: Flower's strategy over the admitted nodes, one train message per node."""
    torch.manual_seed(settings.seed)
    model = model_for(settings.model, contract)
    strategy = make_strategy(
        settings.strategy,
        proximal_mu=settings.proximal_mu,
        trim_beta=settings.trim_beta,
        server_learning_rate=settings.server_learning_rate,
        server_momentum=settings.server_momentum,
        clip_factor=settings.clip_factor,
        max_weight_ratio=settings.max_weight_ratio,
        min_nodes=settings.min_nodes,
        evaluate=False,  # evaluations ride on the next train request and on finish
    )
    strategy.on_reply = audit.reply
    result = strategy.start(
        grid=FastGrid(grid, set(roster), on_unanswered=strategy.note_unanswered),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.rounds,
        timeout=settings.round_timeout,
        train_config=node_settings(settings, contract, 1),  # the strategy sets server-round
    )
    if not any(strategy.train_by_node.values()):
        raise RunFailed("no round produced a model; see node refusals above")
    return result, strategy


def _publish(
    context: Context,
    settings: RunSettings,
    contract: Contract,
    registry: Registry,
    roster: dict[int, pb.Joined],
    refused: dict[int, str],
    ids: Identities,
    result: Result,
    strategy: Any,
) -> Any:
    n_features = Encoder(contract).n_features
    rounds = [
        round_summary(r, strategy.eval_by_node.get(r, {}), ids, settings.eval_noise)
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
                "max_grad_norm": clip_norm(settings.max_grad_norm, trained.noise_multiplier),
                "sample_rate": float(trained.sample_rate),
            }
    # the final model's releases on finish: Platt-calibrate it on them (post-processing, no ε) and
    # report the published model's metrics, each with its 95 % interval
    published = publish_calibrated(
        settings.model,
        result.arrays.to_torch_state_dict(),
        strategy.eval_by_node.get(settings.rounds, {}).values(),
        settings.eval_noise,
        calibrate=settings.calibrate,
    )
    final: dict[str, Any] = published.metrics or next(
        (r["global"] for r in reversed(rounds) if "global" in r), {}
    )
    return registry.publish(
        name=settings.model_name or contract.name,
        task=contract.task,
        contract=contract,
        model_kind=settings.model,
        n_features=n_features,
        weights=weights_to_bytes(published.state),
        metrics={"rounds": rounds, "final": final},
        participants=list(participants.values()),
        privacy={
            "delta": settings.delta,
            "epsilon_per_node": epsilon,
            "mechanism": "DP-SGD (Opacus, Poisson sampling) + Gaussian-noised evaluation "
            "histograms; min(RDP, PLD) accountant over each node's whole ledger",
            "epsilon_covers": "every release each node made in this run: its DP-SGD rounds, "
            "its noised evaluation histograms and, where its owner allows analytics, its noised "
            "drift reference (every feature's histogram, purpose analytics/drift). Nothing else "
            "leaves a node: no exact counts or losses; sizes are public ranges; aggregation "
            "weights are equal",
            "noise_multiplier": settings.noise_multiplier if settings.target_epsilon <= 0 else None,
            "target_epsilon": settings.target_epsilon or None,
            "eval_noise": settings.eval_noise,
            "max_grad_norm": settings.max_grad_norm
            or f"{describe_clip(0.0)} per node: participants list each node's",
            "sample_rate": settings.sample_rate,
        },
        run={
            "run_id": str(context.run_id),
            "strategy": settings.strategy,
            "rounds": settings.rounds,
            "config": settings.model_dump(mode="json"),
            "refused_nodes": {ids.name(k): v for k, v in refused.items()},
            "failures_by_round": {
                str(r): {ids.name(n): why for n, why in f.items()}
                for r, f in strategy.failures.items()
                if f
            },
        },
    )
