"""Local training with DP-SGD (Opacus per-sample gradients, Poisson sampling) and DP evaluation.

Both are total functions of the coordinator's weights: for every weight vector (NaN, ±inf, huge)
and every data set (zero rows included) they return normally, with finite values whose form —
tensor names and shapes, step count, histogram length — never depends on the data. Otherwise an
exception or a NaN would be a release the ledger never accounted (a crafted model can make one
appear exactly when some record satisfies a predicate). What leaves is only the DP release itself.

Modules: `config` (`DPTrainConfig`: what a run asks of each node), `planning` (the run's noise
and its planned releases, from the settings alone), `dp_sgd` (one round of DP-SGD, `train_dp`),
`evaluation` (noised evaluation histograms, `evaluate`). The names bench/ and the docs use as
`client.training.<name>` are re-exported here; code in the tree imports them from their module.
"""

from __future__ import annotations

from client.training.config import OPTIMIZERS, DPTrainConfig
from client.training.dp_sgd import Moments, TrainResult, train_dp
from client.training.evaluation import EvalRelease, evaluate, final_noise
from client.training.planning import fit_evaluations, noise_multiplier, plan

__all__ = [
    "OPTIMIZERS",
    "DPTrainConfig",
    "EvalRelease",
    "Moments",
    "TrainResult",
    "evaluate",
    "final_noise",
    "fit_evaluations",
    "noise_multiplier",
    "plan",
    "train_dp",
]
