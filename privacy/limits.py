"""Owner-set limits on what a coordinator may ask of a node, checked before any data is touched.

They are part of the node's budget policy (`privacy.ledger.Policy.limits`), so they are set only
by the data owner (`atoll budget policy`), journalled and authenticated like every other policy
change. The node runtime compares each incoming request against them and refuses what exceeds
them; a coordinator cannot change them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RequestLimits(BaseModel):
    """The most a single coordinator request may ask of this node (before ε is even considered)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_weight_norm: float = Field(
        100.0,
        gt=0,
        description="Largest L2 norm of the whole incoming weight vector (all layers together); "
        "bigger global weights are refused as a possible reconstruction or poisoning attempt",
    )
    min_expected_batch: float = Field(
        8.0,
        gt=0,
        description="Smallest expected Poisson batch, rows × sample_rate; tiny batches make a "
        "single record's gradient stand out",
    )
    max_local_epochs: int = Field(
        10, ge=1, description="Most local epochs of DP-SGD one training round may run"
    )
    max_total_rounds: int = Field(
        100, ge=1, description="Most rounds one run may announce (and so reserve budget for)"
    )
    max_steps_per_round: int = Field(
        10_000,
        ge=1,
        description="Most DP-SGD steps one round may take (local epochs × 1/sample rate); bounds "
        "the work and the accounting a request can cause",
    )
    max_eval_bins: int = Field(
        100,
        ge=2,
        description="Most bins of a noised evaluation histogram; finer bins say more per record",
    )
    min_noise_multiplier: float = Field(
        0.5,
        gt=0,
        description="Smallest noise multiplier accepted, for DP-SGD and evaluation noise alike",
    )
    allowed_models: tuple[str, ...] = Field(
        ("logreg", "mlp", "additive"), description="Model architectures this node agrees to train"
    )
