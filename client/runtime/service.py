"""The node runtime's decisions: one method per request of protos/atoll/node/v1/runtime.proto.

Every request follows one order:
  ledger intact? → audit "request.received" → settings and weights against the owner's limits
  → budget reservation for the whole run → data (cached) → the release charged to the ledger
  → the DP computation → audit "reply.sent" → reply.
A refusal before the charge names the check it failed and depends only on the request, the
owner's contract and policy, and public facts. After the charge, any failure — whatever the
weights or data — returns the one constant refusal `FAILED`, and the charge stays (the order and
the refusals are `client.runtime.gate.RequestGate`'s; the steps requests share are
`client.runtime.steps.RequestSteps`'s, and what a finish releases `client.runtime.finish`'s).
"""

from __future__ import annotations

import copy
import threading

import numpy as np

from client.analytics_data import field_table
from client.node import NodeError, owner_contract
from client.runtime.admission import RunRequest, admit_weights, refuse
from client.runtime.analytics import PURPOSE, admit_query, answer, answered
from client.runtime.app_check import AppCheck, load_trusted_keys
from client.runtime.config import NodeConfig, bucket_of
from client.runtime.data_cache import DataCache
from client.runtime.finish import FinishReleases
from client.runtime.gate import FAILED, after_charge
from client.runtime.moments import MomentStore
from client.schedule import for_round
from client.training.dp_sgd import release_of, train_dp
from common import wire
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import (
    Checkpointer,
    CheckpointPolicy,
    digest_arrays,
    json_number,
)
from privacy.dp import PlannedEvent
from privacy.ledger import BudgetRefused, Ledger, LedgerUnavailable

__all__ = ["FAILED", "NodeService"]


class NodeService(FinishReleases):
    """Holds the owner's contract, ledger, audit log and data; decides each request."""

    def __init__(self, config: NodeConfig, *, seed: int | None = None) -> None:
        self.config = config
        self.contract = owner_contract(config.contract)
        try:
            self.ledger = Ledger(config.state_dir)
        except LedgerUnavailable as err:
            raise NodeError("ledger", str(err)) from None
        self.audit_log = self.ledger.audit_log()
        self.checkpoints = (
            None
            if config.checkpoint_dir is None
            else Checkpointer(
                self.audit_log.engine,
                [self.audit_log.log_id],
                self.audit_log.signer,
                CheckpointPolicy(config.checkpoint_dir),
            )
        )
        self.data = DataCache(config.data, self.contract)
        self._runs: dict[str, RunRequest] = {}
        self.moments = MomentStore()  # Adam's state between a run's rounds (client.training)
        self._lock = threading.Lock()  # one request at a time: the ledger decides in order
        self._rng = np.random.default_rng(seed)  # None: OS entropy (production)
        self.actor = f"node:{config.name}"
        self.app_check = (
            None
            if config.trusted_app_key is None
            else AppCheck(
                load_trusted_keys(config.trusted_app_key),
                config.state_dir,
                allow_older=config.allow_older_app,
            )
        )

    def rollcall(self, req: pb.RollCallRequest) -> pb.RollCallReply:
        def decide() -> pb.RollCallReply:
            run, cfg = self._admit(req.caller, req.settings)
            try:
                data = self._data(req.caller, cfg)
            except NodeError:
                # the node will not join: nothing was spent, so release the reservation now
                # rather than hold it until it expires (a refused node gets no finish)
                self.ledger.close(req.caller.run_id)
                self._runs.pop(req.caller.run_id, None)
                raise
            res = next(r for r in self.ledger.status().runs if r.run_id == req.caller.run_id)
            self._audit(
                req.caller.run_id,
                "data.validated",
                **{k: json_number(v) for k, v in data.report.to_metrics().items()},
            )
            joined = pb.Joined(
                node_name=self.config.name,
                contract_hash=self.contract.hash,
                planned_epsilon=res.planned_epsilon,
                noise_multiplier=cfg.noise_multiplier,
                size_bucket=self.config.size_bucket or bucket_of(len(data.x_train)),
                budget=self._budget(req.caller.run_id),
            )
            self._audit(
                req.caller.run_id,
                "rollcall.answered",
                planned_epsilon=json_number(res.planned_epsilon),
            )
            return pb.RollCallReply(joined=joined)

        return self._answer(req.caller, "rollcall", decide, lambda r: pb.RollCallReply(refusal=r))

    def train(self, req: pb.TrainRequest) -> pb.TrainReply:
        def decide() -> pb.TrainReply:
            run, cfg = self._admit(req.caller, req.settings)
            model = admit_weights(
                req.weights, run.model, self.contract, self.ledger.policy().limits
            )
            data = self._data(req.caller, cfg)
            # from round 2 on, the incoming weights are the last round's global model
            fused = run.evaluate_incoming and run.server_round >= 2 and cfg.eval_noise > 0
            release = release_of(cfg, cfg.noise_multiplier)
            if fused:
                evaluation = (cfg.eval_noise, 1.0, 1)
                self._charge(req.caller, run.server_round - 1, "evaluation", evaluation)
            self._charge(req.caller, run.server_round, "training", release)
            with after_charge():
                incoming = (
                    self._evaluation(req.caller, cfg, copy.deepcopy(model), data, cfg.eval_noise)
                    if fused
                    else pb.Evaluated()
                )
                result = train_dp(
                    model,
                    data.x_train,
                    data.y_train,
                    for_round(cfg, run.server_round),  # this round's learning rate
                    cfg.noise_multiplier,
                    generator_seed=int(self._rng.integers(2**63 - 1)),
                    public_rows=self._public_rows(data),  # the update's scale reveals no count
                    moments=self.moments.get(req.caller.run_id),
                )
                self.moments.put(req.caller.run_id, result.moments)
                arrays = {k: v.detach().cpu().numpy() for k, v in result.state.items()}
                weights = pb.Weights(tensors=[wire.tensor_of(k, v) for k, v in arrays.items()])
                budget = self._budget(req.caller.run_id)
                self._sent(req.caller, run.server_round, "train", budget, digest_arrays(arrays))
                return pb.TrainReply(
                    trained=pb.Trained(
                        weights=weights,
                        noise_multiplier=release[0],
                        sample_rate=release[1],
                        steps=release[2],
                        budget=budget,
                        incoming=incoming,
                    )
                )

        return self._answer(req.caller, "train", decide, lambda r: pb.TrainReply(refusal=r))

    def evaluate(self, req: pb.EvaluateRequest) -> pb.EvaluateReply:
        def decide() -> pb.EvaluateReply:
            run, cfg = self._admit(req.caller, req.settings)
            if cfg.eval_noise <= 0:
                raise refuse(
                    "evaluation-disabled", "this run asked for no evaluation (eval-noise 0)"
                )
            model = admit_weights(
                req.weights, run.model, self.contract, self.ledger.policy().limits
            )
            data = self._data(req.caller, cfg)
            self._charge(req.caller, run.server_round, "evaluation", (cfg.eval_noise, 1.0, 1))
            with after_charge():
                evaluated = self._evaluation(req.caller, cfg, model, data, cfg.eval_noise)
                evaluated.budget.CopyFrom(self._budget(req.caller.run_id))
                self._sent(req.caller, run.server_round, "evaluate", evaluated.budget, None)
                return pb.EvaluateReply(evaluated=evaluated)

        return self._answer(req.caller, "evaluate", decide, lambda r: pb.EvaluateReply(refusal=r))

    def finish(self, req: pb.FinishRequest) -> pb.FinishReply:
        def decide() -> pb.FinishReply:
            final = self._final(req)
            reference, reference_noise = self._reference(req)
            self.ledger.close(req.caller.run_id)
            self._runs.pop(req.caller.run_id, None)
            self.moments.drop(req.caller.run_id)
            budget = self._budget(req.caller.run_id)
            self._audit(
                req.caller.run_id,
                "run.finished",
                epsilon=json_number(budget.epsilon_run),
                epsilon_total=json_number(budget.epsilon_total),
            )
            if final.hist_pos:
                final.budget.CopyFrom(budget)
            return pb.FinishReply(
                finished=pb.Finished(
                    node_name=self.config.name,
                    budget=budget,
                    final=final,
                    drift_reference=reference,
                    drift_reference_noise=reference_noise,
                )
            )

        reply = self._answer(req.caller, "finish", decide, lambda r: pb.FinishReply(refusal=r))
        self._checkpoint()
        return reply

    def _checkpoint(self) -> None:
        """A signed checkpoint of the node's audit log after a run or query ends (errors, e.g.
        a log found truncated below the last checkpoint, are logged by the Checkpointer)."""
        if self.checkpoints is not None:
            with self._lock:
                self.checkpoints.run_due(force=True)

    def query(self, req: pb.QueryRequest) -> pb.QueryReply:
        """One analytics query: admission → reservation (purpose analytics) → data → charge
        → noised cells → audit. A query is a run of its own: one reservation, one release."""

        def decide() -> pb.QueryReply:
            run_id = req.caller.run_id
            if self.app_check is not None:  # the build first, as for training runs
                self.app_check.admit(req)
            aq = admit_query(req.spec, self.contract, self.ledger.policy())
            if run_id in self._runs or self.ledger.planned(run_id) is not None:
                raise refuse(
                    "query-run-reused", "a query needs a run of its own; this run already has one"
                )
            self._audit(run_id, "query.admitted", **aq.audit_details())
            planned = [PlannedEvent(*aq.release, PURPOSE)]
            try:
                self.ledger.reserve(run_id, self.contract.task, PURPOSE, planned)
            except BudgetRefused as refusal:
                raise refuse(f"budget-{refusal.code}", str(refusal)) from None
            data = self.data.get(run_id)
            self._charge(req.caller, 1, PURPOSE, aq.release)
            self.ledger.close(run_id)  # fully spent: nothing is left to hold
            with after_charge():
                rng = np.random.default_rng(int(self._rng.integers(2**63 - 1)))
                values, std = answer(
                    aq, field_table(data, self.contract), self.contract, rng.standard_normal
                )
                reply = answered(aq, values, std, self.config.name)
                reply.epsilon = self.ledger.run_epsilon(run_id)
                reply.budget.CopyFrom(self._budget(run_id))
                self._sent(req.caller, 1, "query", reply.budget, digest_arrays({"values": values}))
                return pb.QueryReply(answered=reply)

        reply = self._answer(req.caller, "query", decide, lambda r: pb.QueryReply(refusal=r))
        self._checkpoint()
        return reply
