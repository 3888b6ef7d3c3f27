"""Nearly unbiased estimates, with 95 % intervals, of held-out metrics from DP-noised histograms.

What the nodes release about a model is, per node, two score histograms (positives, negatives) on
`bins` fixed bins of the output logit (`common.metrics.logit_histogram`), each bin plus N(0, σ²)
noise. The coordinator pools them: the pooled counts are the true held-out counts plus
Gaussian noise of known variance v = Σ_nodes σ² per bin. Everything here is post-processing of
those releases (no ε).

Why not the old plug-in (clip the noised counts at 0, then compute AUC / log loss): clipping adds
≈ 0.4 σ√k to every empty bin of both histograms — spurious pairs that pull AUC towards 0.5 and log
loss up (0.02–0.10 AUC too low in practice). Here:

1. Counts are used **unclipped**: every metric is a ratio of sums that are linear (log loss, Brier,
   calibration) or bilinear in independent noises (AUC's numerator Σ_{i>j} P_i N_j), so numerators
   and denominators are unbiased; the remaining ratio bias is second order and is removed by the
   bootstrap below.
2. **Within-bin model.** A bin holds scores from a whole range; ties (AUC) and bin-centre losses
   are a discretisation error that does not shrink with more data. Within each bin the score
   density is taken uniform (`Grid`) and the share of positives follows a fitted logistic map of
   the raw logit, q(z) = σ(a·z + b) (`fit_map`: the same Platt fit that calibrates the
   published model). AUC counts a within-bin pair by that model instead of ½; losses are averaged
   over the bin instead of read at its centre.
3. **Parametric bootstrap.** The noise distribution is known exactly, so the estimator's error is
   simulated: redraw the noise around the observed counts, refit everything that is fitted
   (including the calibration map when the published model is calibrated on these same
   histograms — that is the "optimism" of fitting and reporting on one release), and compare with
   the same published map on the observed counts. The mean error is subtracted (bias
   correction) and its 2.5 / 97.5 % quantiles give the interval (basic bootstrap).
4. **Discretisation allowance.** The within-bin density is tilted by the slope of the log counts
   of the neighbouring bins. What the within-bin model may get wrong is taken as the largest shift
   of the number under models the counts cannot rule out — a share of positives flat within each
   bin, or twice as steep (at least 2 per logit unit) — or 1.5 × the shift to an untilted
   density, or 0.75 × the shift from the crude bin-centre value; it is added as a 1.96-sd term
   in quadrature to each side of the interval. When a model's scores all fall in one or two
   bins the histograms say little about its ranking, and this allowance makes the AUC interval
   say so.

The interval covers the DP noise on the held-out rows' histograms; the held-out rows themselves are
fixed (a different test set would give a different true value — that sampling error is not in
the interval). Pure numpy.

Modules: `pooling` (the nodes' releases summed) → `logit` (the fixed bins of the output logit,
and affine maps of it) → `within_bin` (the within-bin model and the metrics of counts under it) →
`platt` (the logistic map fitted on noised counts) → `estimates` (bias-corrected estimates and
intervals by parametric bootstrap; the model card's form).
"""

from __future__ import annotations

from common.estimation.estimates import (
    DRAWS,
    INTERVAL_COVERS,
    METRIC_RANGE,
    METRICS,
    Z95,
    Estimate,
    Report,
    estimate,
    report_dict,
)
from common.estimation.logit import (
    IDENTITY,
    LOGIT_BIN_HIGH,
    LOGIT_BIN_LOW,
    Affine,
    logit_bin_edges,
)
from common.estimation.platt import (
    fit_map,
)
from common.estimation.pooling import (
    Pooled,
    pool,
)
from common.estimation.within_bin import (
    SUBGRID,
    Grid,
)

__all__ = [
    "Z95",
    "SUBGRID",
    "DRAWS",
    "METRICS",
    "METRIC_RANGE",
    "INTERVAL_COVERS",
    "Pooled",
    "pool",
    "LOGIT_BIN_LOW",
    "LOGIT_BIN_HIGH",
    "logit_bin_edges",
    "Affine",
    "IDENTITY",
    "Grid",
    "fit_map",
    "Estimate",
    "Report",
    "estimate",
    "report_dict",
]
