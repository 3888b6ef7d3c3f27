"""Flower ClientApp: the node's answers — roll call, train with DP, evaluate with DP, finish.

Replies carry model weights and aggregate numbers only. Every handler follows the same order:
settings → ledger and audit log → contract check → budget reservation for the whole run (refuse
if over) → only then the data. Each DP release is written to the ledger, and each reply (with
the sha256 of the exact update) to the node's audit log, before the reply leaves; if either
write fails, nothing is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import cast

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigScalar,
    Context,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client.node import (
    NodeData,
    NodeError,
    NodeSettings,
    guarded,
    load_node_data,
    node_contract,
)
from client.training import DPTrainConfig, evaluate, noise_multiplier, plan, train_dp
from common.contract import Contract
from common.encoding import Encoder
from common.model import build_model
from privacy.audit import AuditWriteError, digest_arrays, json_number
from privacy.ledger import BudgetRefused, Ledger, LedgerUnavailable

logging.getLogger("opacus").setLevel(logging.ERROR)
app = ClientApp()


def _setting(cfg: ConfigRecord, key: str, default: ConfigScalar) -> ConfigScalar:
    """One scalar setting; a list (which a ConfigRecord may hold) fails as int()/float() would."""
    value = cfg.get(key, default)
    if isinstance(value, list):
        raise TypeError(f"config '{key}' must be a single value, not a list")
    return value


def _score(scores: Mapping[str, float | list[float]], key: str) -> float:
    """One number from `evaluate`'s scores (the histograms are the only lists there)."""
    value = scores[key]
    if isinstance(value, list):
        raise TypeError(f"score '{key}' must be a single number, not a list")
    return float(value)


def _metric_record(values: Mapping[str, MetricRecordValues]) -> MetricRecord:
    """MetricRecord copies its input; a plain dict[str, float] is fine to pass (dict invariance)."""
    return MetricRecord(dict(values))


def _config(msg: Message) -> ConfigRecord:
    # The coordinator sends its settings as the ConfigRecord "config" (server.server_app).
    return cast(ConfigRecord, msg.content["config"]) if "config" in msg.content else ConfigRecord()


def _train_config(cfg: ConfigRecord) -> DPTrainConfig:
    return DPTrainConfig(
        epochs=int(_setting(cfg, "local-epochs", 1)),
        sample_rate=float(_setting(cfg, "sample-rate", 0.02)),
        learning_rate=float(_setting(cfg, "learning-rate", 0.5)),
        max_grad_norm=float(_setting(cfg, "max-grad-norm", 1.0)),
        noise_multiplier=float(_setting(cfg, "noise-multiplier", 1.0)),
        target_epsilon=float(_setting(cfg, "target-epsilon", 0.0)),
        delta=float(_setting(cfg, "delta", 1e-5)),
        total_rounds=int(_setting(cfg, "total-rounds", 1)),
        eval_noise=float(_setting(cfg, "eval-noise", 10.0)),
        eval_bins=int(_setting(cfg, "eval-bins", 20)),
        proximal_mu=float(_setting(cfg, "proximal-mu", 0.0)),
    )


def _open_ledger(settings: NodeSettings) -> Ledger:
    if not settings.state_dir:
        raise NodeError("ledger", f"node '{settings.name}' has no state-dir in its node config")
    try:
        return Ledger(settings.state_dir)
    except LedgerUnavailable as err:
        raise NodeError("ledger", f"node '{settings.name}': {err}") from None


class NodeAudit:
    """The node's own signed audit log (in its state database); a failed write fails the reply."""

    def __init__(self, settings: NodeSettings, ledger: Ledger, run_id: str) -> None:
        self.log = ledger.audit_log()
        self.actor, self.subject, self.node = (
            f"node:{settings.name}",
            f"run:{run_id}",
            settings.name,
        )

    def __call__(self, action: str, **details: object) -> None:
        try:
            self.log.append(self.actor, action, self.subject, details)
        except AuditWriteError as err:
            raise NodeError("audit", f"node '{self.node}': audit write failed ({err})") from None


def _open(msg: Message, context: Context, kind: str) -> tuple[NodeSettings, Ledger, NodeAudit]:
    settings = NodeSettings.from_node_config(context.node_config)
    ledger = _open_ledger(settings)
    audit = NodeAudit(settings, ledger, str(context.run_id))
    audit(
        "request.received",
        kind=kind,
        run=str(context.run_id),
        round=int(_setting(_config(msg), "server-round", 0)),
    )
    return settings, ledger, audit


def _admit(
    msg: Message, context: Context, kind: str
) -> tuple[NodeSettings, Contract, DPTrainConfig, Ledger, NodeAudit]:
    """Everything that must pass before the data is touched, including the budget reservation."""
    settings, ledger, audit = _open(msg, context, kind)
    cfg = _config(msg)
    try:
        contract = node_contract(settings, str(cfg.get("contract-hash", "")))
        tcfg = _train_config(cfg)
        try:
            # Later messages of a run reuse its reserved plan: calibrating a target ε once.
            planned = ledger.planned(str(context.run_id)) or plan(tcfg)
            ledger.reserve(str(context.run_id), contract.task, "training", planned)
            sigma = next(p.noise_multiplier for p in planned if p.purpose == "training")
            tcfg = replace(tcfg, noise_multiplier=sigma, target_epsilon=0.0)
        except BudgetRefused as refusal:
            raise NodeError(
                f"budget-{refusal.code}", f"node '{settings.name}': {refusal}"
            ) from None
        except ValueError as err:  # e.g. an unreachable target ε
            raise NodeError("budget-plan", f"node '{settings.name}': {err}") from None
    except NodeError as err:
        audit("request.refused", kind=kind, run=str(context.run_id), code=err.code, reason=str(err))
        raise
    return settings, contract, tcfg, ledger, audit


def _load(settings: NodeSettings, contract: Contract, audit: NodeAudit, kind: str) -> NodeData:
    try:
        data = load_node_data(settings, contract)
    except NodeError as err:
        audit("request.refused", kind=kind, code=err.code, reason=str(err))
        raise
    audit(
        "data.validated",
        kind=kind,
        **{k: json_number(v) for k, v in data.report.to_metrics().items()},
    )
    return data


def _budget_metrics(ledger: Ledger, run_id: str) -> dict[str, float]:
    status = ledger.status()
    return {
        "epsilon": ledger.run_epsilon(run_id),
        "epsilon-total": status.spent_epsilon,
        "epsilon-cap": status.cap_epsilon,
        "epsilon-remaining": status.remaining_epsilon,
        "delta": status.delta,
    }


def _model_from(msg: Message, contract: Contract, kind: str) -> torch.nn.Module:
    model = build_model(kind, Encoder(contract).n_features)
    # The coordinator sends the global weights as the ArrayRecord "arrays" (Flower's strategies).
    arrays = cast(ArrayRecord, msg.content["arrays"])
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


@app.query("rollcall")
@guarded
def rollcall(msg: Message, context: Context) -> Message:
    """Join a run: check contract and budget (reserving it), then report data-quality counts."""
    settings, contract, tcfg, ledger, audit = _admit(msg, context, "rollcall")
    data = _load(settings, contract, audit, "rollcall")
    run_id = str(context.run_id)
    reserved = next(r for r in ledger.status().runs if r.run_id == run_id)  # _admit made it
    metrics = {
        "train-examples": len(data.x_train),
        "test-examples": len(data.x_test),
        "planned-epsilon": reserved.planned_epsilon,
        "noise-multiplier": noise_multiplier(tcfg),
        **_budget_metrics(ledger, run_id),
        **data.report.to_metrics(),
    }
    info = ConfigRecord({"node-name": settings.name, "contract-hash": contract.hash})
    audit(
        "rollcall.answered",
        run=run_id,
        node=settings.name,
        planned_epsilon=json_number(float(metrics["planned-epsilon"])),
    )
    return Message(RecordDict({"info": info, "metrics": _metric_record(metrics)}), reply_to=msg)


@app.train()
@guarded
def train(msg: Message, context: Context) -> Message:
    """One round of local DP-SGD from the global weights; the release is ledgered first."""
    settings, contract, tcfg, ledger, audit = _admit(msg, context, "train")
    data = _load(settings, contract, audit, "train")
    cfg = _config(msg)
    model = _model_from(msg, contract, str(cfg.get("model", "logreg")))
    result = train_dp(model, data.x_train, data.y_train, tcfg, noise_multiplier(tcfg))
    run_id = str(context.run_id)
    try:
        ledger.record(
            run_id,
            int(_setting(cfg, "server-round", 0)),
            "training",
            result.noise_multiplier,
            result.sample_rate,
            result.steps,
        )
    except BudgetRefused as refusal:
        raise NodeError(f"budget-{refusal.code}", f"node '{settings.name}': {refusal}") from None
    budget = _budget_metrics(ledger, run_id)
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.train_loss,
            "noise-multiplier": result.noise_multiplier,
            "sample-rate": result.sample_rate,
            "steps": result.steps,
            **budget,
        }
    )
    arrays = ArrayRecord(result.state)
    audit(
        "reply.sent",
        run=run_id,
        round=int(_setting(cfg, "server-round", 0)),
        node=settings.name,
        kind="train",
        update_sha256=digest_arrays(arrays),
        examples=result.num_examples,
        epsilon=json_number(float(budget["epsilon"])),
    )
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
@guarded
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the held-out split; only noised histograms leave."""
    settings, contract, tcfg, ledger, audit = _admit(msg, context, "evaluate")
    if tcfg.eval_noise <= 0:
        raise NodeError("budget-evaluation", "evaluation without noise would have unbounded ε")
    data = _load(settings, contract, audit, "evaluate")
    cfg = _config(msg)
    model = _model_from(msg, contract, str(cfg.get("model", "logreg")))
    scores = evaluate(model, data.x_test, data.y_test, tcfg.eval_noise, tcfg.eval_bins)
    run_id = str(context.run_id)
    try:
        ledger.record(
            run_id, int(_setting(cfg, "server-round", 0)), "evaluation", tcfg.eval_noise, 1.0, 1
        )
    except BudgetRefused as refusal:
        raise NodeError(f"budget-{refusal.code}", f"node '{settings.name}': {refusal}") from None
    scores["num-examples"] = max(1.0, _score(scores, "n"))  # noised count, used for weighting
    scores.update(_budget_metrics(ledger, run_id))
    audit(
        "reply.sent",
        run=run_id,
        round=int(_setting(cfg, "server-round", 0)),
        node=settings.name,
        kind="evaluate",
        update_sha256=None,
        examples=int(_score(scores, "num-examples")),
        epsilon=json_number(_score(scores, "epsilon")),
    )
    return Message(RecordDict({"metrics": _metric_record(scores)}), reply_to=msg)


@app.query("finish")
@guarded
def finish(msg: Message, context: Context) -> Message:
    """The run is over: release what it reserved but did not spend; report final ε."""
    settings, ledger, audit = _open(msg, context, "finish")
    run_id = str(context.run_id)
    ledger.close(run_id)
    info = ConfigRecord({"node-name": settings.name})
    budget = _budget_metrics(ledger, run_id)
    audit("run.finished", run=run_id, **{k: json_number(v) for k, v in budget.items()})
    metrics = _metric_record(budget)
    return Message(RecordDict({"info": info, "metrics": metrics}), reply_to=msg)
