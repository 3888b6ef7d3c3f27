"""What a run's finish may release besides closing it: the final model's noised evaluation and
the drift reference (noised histograms of every feature), each charged before it is computed.

Both are optional and neither can stop the run from closing: a refusal or a failure is audited
and leaves an empty release. `client.runtime.service.NodeService.finish` sends them.
"""

from __future__ import annotations

import numpy as np

from client.analytics_data import field_table
from client.node import NodeError
from client.runtime.admission import admit_weights
from client.runtime.drift import plan_reference, release_reference
from client.runtime.gate import ChargedFailure, after_charge
from client.runtime.steps import RequestSteps
from client.training.evaluation import final_noise
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.dp import DRIFT_PURPOSE


class FinishReleases(RequestSteps):
    """The releases a finish carries, for a run this runtime has been serving."""

    def _final(self, req: pb.FinishRequest) -> pb.Evaluated:
        """The final model's evaluation, if asked for a run this runtime has been serving.

        A refusal here (e.g. hostile final weights) does not stop the run from closing.
        """
        if not req.weights.tensors or req.caller.run_id not in self._runs:
            return pb.Evaluated()
        try:
            run, cfg = self._admit(req.caller, req.settings)
            sigma = final_noise(cfg)  # final-eval-noise, or eval-noise without it
            if sigma <= 0:
                return pb.Evaluated()
            model = admit_weights(
                req.weights, run.model, self.contract, self.ledger.policy().limits
            )
            data = self._data(req.caller, cfg)
            self._charge(req.caller, run.server_round, "evaluation", (sigma, 1.0, 1))
        except NodeError as err:
            self._audit(req.caller.run_id, "request.refused", kind="final", code=err.code)
            return pb.Evaluated()
        try:
            with after_charge():
                return self._evaluation(req.caller, cfg, model, data, sigma)
        except ChargedFailure:
            self._audit(req.caller.run_id, "request.failed", kind="final")
            return pb.Evaluated()

    def _reference(self, req: pb.FinishRequest) -> tuple[list[float], float]:
        """The drift reference (noised counts, σ per feature) if the run planned one: only on a
        finish with the final weights (a published model), for a run this runtime served."""
        run = self._runs.get(req.caller.run_id)
        if not req.weights.tensors or run is None or run.train.drift_reference_noise <= 0:
            return [], 0.0
        try:
            plan = plan_reference(
                self.contract,
                noise_multiplier=run.train.drift_reference_noise,
                bins=run.train.drift_bins,
                max_bins=self.ledger.policy().limits.max_eval_bins,
            )
            data = self.data.get(req.caller.run_id)
            self._charge(req.caller, run.train.total_rounds, DRIFT_PURPOSE, plan.release)
        except NodeError as err:
            self._audit(req.caller.run_id, "request.refused", kind="drift-reference", code=err.code)
            return [], 0.0
        try:
            with after_charge():
                rng = np.random.default_rng(int(self._rng.integers(2**63 - 1)))
                table = field_table(data, self.contract)
                values = release_reference(plan, table, self.contract, rng.standard_normal)
                return values, plan.per_feature_noise
        except ChargedFailure:
            self._audit(req.caller.run_id, "request.failed", kind="drift-reference")
            return [], 0.0
