"""The steps `client.runtime.service.NodeService`'s requests are made of, in their order.

Admit a run (the build, its settings against the owner's contract and policy, the planned noise
and the budget reservation for the whole run) → check the data against the owner's limits →
charge a release to the ledger (and audit it) → compute (a noised evaluation) → record the reply
and its budget. `RequestSteps` holds them; the requests themselves are `NodeService`'s.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from client.node import NodeData
from client.runtime.admission import RunRequest, admit_batch, admit_noise, admit_settings, refuse
from client.runtime.app_check import AppCheck
from client.runtime.config import NodeConfig, bucket_of, parse_bucket
from client.runtime.data_cache import DataCache
from client.runtime.gate import RequestGate
from client.training.config import DPTrainConfig
from client.training.evaluation import evaluate
from client.training.planning import noise_multiplier, plan
from common.contract import Contract
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import json_number
from privacy.ledger import BudgetRefused


class RequestSteps(RequestGate):
    """Admission, data, charge, evaluation and reply records, shared by every request."""

    config: NodeConfig
    contract: Contract
    data: DataCache
    app_check: AppCheck | None
    _runs: dict[str, RunRequest]
    _rng: np.random.Generator

    def _budget(self, run_id: str) -> pb.Budget:
        status = self.ledger.status()
        return pb.Budget(
            epsilon_run=self.ledger.run_epsilon(run_id),
            epsilon_total=status.spent_epsilon,
            epsilon_cap=status.cap_epsilon,
            epsilon_remaining=status.remaining_epsilon,
            delta=status.delta,
        )

    def _public_rows(self, data: NodeData) -> int:
        """The lower end of the node's size bucket: the only size a limit may depend on."""
        bucket = self.config.size_bucket or bucket_of(len(data.x_train))
        return parse_bucket(bucket)[0]

    def _admit(
        self, caller: pb.Caller, settings: pb.RunSettings
    ) -> tuple[RunRequest, DPTrainConfig]:
        if self.app_check is not None:  # the build first: authentic, unexpired, not older
            self.app_check.admit(settings)
        policy = self.ledger.policy()
        run = admit_settings(settings, self.contract, policy)
        earlier = self._runs.get(caller.run_id)
        if earlier is not None and not earlier.same_run_as(run):
            raise refuse("run-changed", "a run's settings cannot change between its messages")
        cfg = run.train
        planned = self.ledger.planned(caller.run_id)
        if planned is None:
            sigma = noise_multiplier(cfg)
            if cfg.target_epsilon > 0:  # calibrated: never below the owner's floor
                sigma = max(sigma, policy.limits.min_noise_multiplier)
            cfg = replace(cfg, noise_multiplier=sigma, target_epsilon=0.0)
            planned = plan(cfg)
        sigma = next(p.noise_multiplier for p in planned if p.purpose == "training")
        admit_noise(sigma, policy.limits)
        try:
            self.ledger.reserve(caller.run_id, self.contract.task, "training", planned)
        except BudgetRefused as refusal:
            raise refuse(f"budget-{refusal.code}", str(refusal)) from None
        self._runs[caller.run_id] = run
        return run, replace(cfg, noise_multiplier=sigma, target_epsilon=0.0)

    def _data(self, caller: pb.Caller, cfg: DPTrainConfig) -> NodeData:
        data = self.data.get(caller.run_id)
        admit_batch(cfg, self._public_rows(data), self.ledger.policy().limits)
        return data

    def _charge(
        self, caller: pb.Caller, rnd: int, purpose: str, release: tuple[float, float, int]
    ) -> None:
        try:
            self.ledger.record(caller.run_id, rnd, purpose, *release)
        except BudgetRefused as refusal:
            raise refuse(f"budget-{refusal.code}", str(refusal)) from None
        sigma, q, steps = release
        # what an independent accountant needs to recompute this node's ε from its audit log
        self._audit(
            caller.run_id,
            "release.charged",
            purpose=purpose,
            round=rnd,
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
        )

    def _evaluation(
        self,
        caller: pb.Caller,
        cfg: DPTrainConfig,
        model: torch.nn.Module,
        data: NodeData,
        sigma: float,
    ) -> pb.Evaluated:
        """One noised evaluation at σ `sigma`; the caller has charged it (inside
        `after_charge()`)."""
        rel = evaluate(
            model,
            data.x_test,
            data.y_test,
            sigma,
            cfg.eval_bins,
            rng=np.random.default_rng(int(self._rng.integers(2**63 - 1))),
        )
        return pb.Evaluated(hist_pos=rel.hist_pos, hist_neg=rel.hist_neg, noise=sigma)

    def _sent(
        self, caller: pb.Caller, rnd: int, kind: str, budget: pb.Budget, digest: str | None
    ) -> None:
        """The node's record of a reply (the coordinator's crosscheck compares its digest)."""
        self._audit(
            caller.run_id,
            "reply.sent",
            run=caller.run_id,
            kind=kind,
            round=rnd,
            node=self.config.name,
            update_sha256=digest,
            epsilon=json_number(budget.epsilon_run),
        )
