"""The published model's final step: Platt scaling fitted on the nodes' final DP releases.

On `finish` every node releases Gaussian-noised score histograms of the final model on its
held-out rows (charged to its ledger). The coordinator pools them and fits a logistic map of the
model's output logit, P(positive | z) = σ(a·z + b) (`common.estimation.fit_map`: an unbiased
estimating equation on the noised, unclipped counts). That is post-processing of releases already
made and accounted: no extra ε. The map is folded into the published weights — the output layer's
weight ×a and bias ×a + b — so the served model's logit is exactly a·z + b and the scoring API,
reason codes included, needs no change. a > 0, so the ranking (and the AUC) is unchanged.

Fitting and reporting on the same release is optimistic; `common.estimation.estimate(...,
calibrate=True)` refits the map inside its bootstrap and removes that optimism from the reported
log loss (its `bias_corrected` says by how much).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.estimation import IDENTITY, Affine, Report, estimate, pool, report_dict

CALIBRATION_METHOD = (
    "Platt scaling of the output logit (z -> slope*z + intercept), fitted on the pooled "
    "Gaussian-noised score histograms the nodes released on finish: post-processing of "
    "accounted releases, no extra epsilon; folded into the output layer's weight and bias"
)


def output_layer(state: Mapping[str, Any]) -> tuple[str, str]:
    """(weight key, bias key) of the model's output layer: the last Linear, one output unit.

    For `build_model`'s kinds: logreg `0.weight`/`0.bias`, mlp `2.weight`/`2.bias`.
    """
    for key in reversed(list(state)):
        if key.endswith(".weight"):
            prefix = key[: -len(".weight")]
            bias = f"{prefix}.bias"
            shape = tuple(np.shape(state[key]))
            if bias in state and len(shape) == 2 and shape[0] == 1:
                return key, bias
            break
    raise ValueError("the model has no single-output Linear layer last: cannot calibrate it")


def apply_affine(state: Mapping[str, Any], affine: Affine) -> dict[str, torch.Tensor]:
    """A copy of `state` whose output logit is affine.slope·z + affine.intercept (exactly)."""
    if not (np.isfinite(affine.slope) and affine.slope > 0 and np.isfinite(affine.intercept)):
        raise ValueError(f"calibration map must have a finite slope > 0, got {affine}")
    w_key, b_key = output_layer(state)
    out = {k: torch.as_tensor(np.asarray(v)).clone() for k, v in state.items()}
    with torch.no_grad():
        out[w_key] = out[w_key] * affine.slope
        out[b_key] = out[b_key] * affine.slope + affine.intercept
    return out


@dataclass(frozen=True)
class Published:
    """The weights to publish, the map folded into them, and the card's final metrics."""

    state: dict[str, torch.Tensor]
    report: Report | None  # None: no final release (evaluation off or every node refused)
    calibrated: bool

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.final: plain floats for existing readers, and each with its interval."""
        if self.report is None:
            return {}
        r = self.report
        return {
            "roc_auc": r.value("roc_auc"),
            "log_loss": r.value("log_loss"),
            "brier": r.value("brier"),
            "examples": round(r.examples),
            "estimates": report_dict(r),
            "interval_covers": report_dict(r)["interval_covers"],
            **self.calibration_dict,
        }

    @property
    def calibration_dict(self) -> dict[str, Any]:
        if self.report is None:
            return {}
        return {
            "calibration": {
                "applied": self.calibrated,
                "method": CALIBRATION_METHOD if self.calibrated else "none",
                **(self.report.calibration if self.calibrated else IDENTITY).as_dict(),
                "fitted_map": self.report.within_bin.as_dict(),
                "log_loss_optimism_removed": -self.report.metrics["log_loss"].bias_corrected,
            }
        }


def publish_calibrated(
    kind: str,
    state: Mapping[str, Any],
    releases: Iterable[Any],
    eval_noise: float | None = None,
    *,
    calibrate: bool = True,
    draws: int | None = None,
) -> Published:
    """Calibrate (optionally) and estimate the final model's metrics from its final releases.

    `releases`: objects with `hist_pos`, `hist_neg` and, if present, `noise` (σ of that node's
    release; `eval_noise` otherwise) — `pb.Evaluated` on the coordinator, `EvalRelease` in
    benchmarks. `kind` is the model kind (only its output layer is touched).
    """
    del kind  # the output layer is found from the weights; kept for the call sites' clarity
    triples: list[tuple[Sequence[float], Sequence[float], float]] = []
    for r in releases:
        sigma = float(getattr(r, "noise", 0.0) or (eval_noise or 0.0))
        triples.append((list(r.hist_pos), list(r.hist_neg), sigma))
    pooled = pool(triples)
    plain = {k: torch.as_tensor(np.asarray(v)).clone() for k, v in state.items()}
    if pooled is None or pooled.noise_var <= 0:
        return Published(state=plain, report=None, calibrated=False)
    kwargs: dict[str, Any] = {"calibrate": calibrate}
    if draws is not None:
        kwargs["draws"] = draws
    report = estimate(pooled, **kwargs)
    if not calibrate:
        return Published(state=plain, report=report, calibrated=False)
    return Published(
        state=apply_affine(state, report.calibration), report=report, calibrated=True
    )
