"""A training run's configuration: the one place every run default is written.

Flower hands the ServerApp a run config = the app's `[tool.flwr.app.config]` (pyproject) merged
with `flwr run --run-config` overrides. `RunConfig` validates it and holds every default once;
pyproject lists the same keys with the same values (Flower merges overrides only into keys listed
there; tests/test_run_config.py keeps the two equal), and the `atoll` CLI leaves options the user
did not give out of the run config, so the app's default applies.

Light on purpose: imported by the CLI and other small processes, so nothing heavy (torch, flwr)
at module level. The model kinds and strategy names live here; `common.model` and
`server.strategies` import them.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import AtollError

ModelKind = Literal["logreg", "mlp", "additive"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)  # ("logreg", "mlp", "additive")

StrategyName = Literal[
    "fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "fedavg-clipped", "fedavgm", "fedadam"
]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)

OptimizerName = Literal["adam", "sgd"]
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)  # client.training.OPTIMIZERS (tested)

RunConfigValue = str | int | float | bool  # what a Flower run config holds


class RunConfigError(AtollError, ValueError):
    """The run config is unusable; the message names the key."""


class RunConfig(BaseModel):
    """Every run-config key, by its Flower (kebab-case) alias, with its one default."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # Training defaults: evidence in bench/quality_sweep.py (grids diag, rounds, mlp, evalsplit;
    # README "Training defaults"). At ε = 1 per node the model is optimisation-limited, not
    # privacy-limited (Telco/bank AUC at ε = 1000 is within 0.002–0.012 of ε = 1), so the
    # defaults buy steps that move the model and spend the rest on an honest final evaluation.
    # 10 rounds × 10 steps: more rounds at the same ε raise σ (20 rounds: σ 7 → 15) and lost
    # 0.01–0.02 AUC; 5 rounds (the old default) stopped short.
    rounds: int = Field(10, alias="num-server-rounds", ge=1, le=1000)
    # plain FedAvg (equal weights): server momentum (fedavgm) and server Adam (fedadam) were
    # 0.003–0.03 AUC worse on both data sets at ε = 1 — each round's average is already noisy
    strategy: str = "fedavg"
    # additive (common.model: a linear layer on a fixed piecewise-linear basis of each numeric
    # feature, knots from the contract's bounds): at ε = 1 over 3 seeds it beat logreg on Telco
    # (0.823 vs 0.811 AUC) and bank (0.749 vs 0.743), and on untuned contracts whose numeric mass
    # sits in a corner of its range (0.841 vs 0.666); the small MLP lost 0.01–0.02 AUC under DP
    # (more weights share one clipping norm). Evidence: bench/results/quality_basis.md
    model: str = "additive"
    local_epochs: int = Field(1, alias="local-epochs", ge=1)
    # q = 0.1: 10 DP-SGD steps per round on batches of 10 % of the rows (size-bucket-scaled);
    # q = 0.02 (50 steps) let local models drift and cost more ε per unit of progress
    sample_rate: float = Field(0.1, alias="sample-rate", gt=0, le=1)
    # per-round evaluations (the card's round metrics): cheap and coarse. 9 of them at σ 50 cost
    # about what one at σ 17 would; the final one (final-eval-noise) gets the precision
    eval_noise: float = Field(50.0, alias="eval-noise", ge=0)
    # logit bins (common.estimation.logit_bin_edges): 12 = width 1.2 over [-8, 4] plus two open
    # ends; fewer bins add less DP noise to every estimate, the within-bin model covers the rest
    eval_bins: int = Field(12, alias="eval-bins", ge=2, le=1000)
    # σ of the final model's evaluation (on finish), whose histograms calibrate the published
    # model and give the card's numbers; 0: the same as eval-noise. 4.5: the final release
    # alone is ε ≈ 0.8 at δ 1e-5, the largest share training can give up at ε = 1 (σ 7 → 7.6
    # cost no AUC); the AUC estimate's noise sd halves against 5 evaluations at σ 10
    final_eval_noise: float = Field(4.5, alias="final-eval-noise", ge=0)
    # σ of the drift reference each node releases on finish (server.drift): every feature's
    # histogram at σ·√F, one Gaussian release at σ in all (ε ≈ 1.1 alone at δ 1e-5), charged as
    # "analytics/drift" by the nodes whose owners allow analytics (others release none). 4: the
    # largest σ at which a +30% shift of one Telco silo's MonthlyCharges out of 3 was flagged in
    # 5 of 5 seeded trials (σ 5: 4/5, 8: 2-4/5, 10: 0-3/5; checks at ε 1). With a target ε, the
    # evaluations and the reference are scaled together into their share (fit_evaluations).
    # 0: no reference
    drift_reference_noise: float = Field(4.0, alias="drift-reference-noise", ge=0)
    # the reference's (and later checks') bins per numeric feature: equal, over the contract range
    drift_bins: int = Field(10, alias="drift-bins", ge=2, le=100)
    # the update rule on the privatised gradient (post-processing: ε unchanged). Adam's step is
    # independent of the gradient's scale (clipping norm, batch, feature ranges), so one learning
    # rate converges across data sets; evidence in bench/quality_sweep.py (--grid evidence).
    # Each node keeps Adam's moments between a run's rounds (client.runtime.moments)
    optimizer: OptimizerName = "adam"
    # 0.05: with Adam a step moves each weight by ≲ lr, so 100 steps reach |w| ≈ 5 (encoded
    # features are O(1)); 0.02 stopped short of the optimum, 0.1 was as good but noisier
    learning_rate: float = Field(0.05, alias="learning-rate", gt=0)
    # the last round's learning rate as a fraction of learning-rate, cosine in between
    # (client.schedule); 1: constant. Decaying lets a model that has converged settle (Adam keeps
    # jittering by ≈ lr): cosine to 0.3 gained Telco 0.003–0.004 AUC at ε 3 and 1000, nothing at
    # ε 1 or on bank, and cost an under-trained model (skewed amounts, `corner`) 0.006–0.008 —
    # so the default stays constant (bench/results/quality_lr_schedule.md)
    learning_rate_final: float = Field(1.0, alias="learning-rate-final", gt=0, le=1)
    # 0: auto — each node clips at C = 6/σ within [1, 3] from its own training noise σ
    # (privacy.dp.auto_clip_norm: C 1 at ε 1, 3 at ε ≥ 3); C = 1 everywhere clipped nearly every
    # record, biasing the logits (raw log loss 0.53–0.60) and costing 0.005 AUC at ε ≥ 2 on data
    # sets nobody tuned for (bench/results/quality_unseen.md). A value > 0 is used as given
    max_grad_norm: float = Field(0.0, alias="max-grad-norm", ge=0)
    # fixed noise when no target-epsilon is given: 2.0 keeps a default run (10 × 10 steps at
    # q 0.1, plus evaluations) at ε ≈ 2.5 per node (δ 1e-5), near the old default's 2.2
    noise_multiplier: float = Field(2.0, alias="noise-multiplier", gt=0)
    target_epsilon: float = Field(0.0, alias="target-epsilon", ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    proximal_mu: float = Field(0.0, alias="proximal-mu", ge=0)
    trim_beta: float = Field(0.2, alias="trim-beta", ge=0, lt=0.5)
    # fedavg-clipped: each node's update is scaled down to at most clip-factor × the round's
    # median update norm. 1 = no node moves the model further than the typical node does (the
    # longest honest updates are the noisiest DP ones, so little is lost; bench/robustness.py)
    clip_factor: float = Field(1.0, alias="clip-factor", gt=0)
    # a node's aggregation weight (its claimed num-examples) is clamped into [m / r, m × r], m =
    # the round's lower-median claim. 1 = equal weights: Atoll's nodes never release a count
    # (they all claim 1), so any other claim is unverifiable and the card states equal weights
    max_weight_ratio: float = Field(1.0, alias="max-weight-ratio", ge=1)
    # fedavgm: server SGD step and momentum; fedadam: server Adam's eta and beta_1
    server_learning_rate: float = Field(1.0, alias="server-learning-rate", gt=0)
    server_momentum: float = Field(0.0, alias="server-momentum", ge=0, lt=1)
    # Platt-scale the published model on the nodes' final noised histograms (no extra ε)
    calibrate: bool = True
    min_nodes: int = Field(2, alias="min-nodes", ge=1)
    round_timeout: float = Field(600, alias="round-timeout", gt=0)
    seed: int = 42
    # the run's data contract by its hash; the coordinator resolves it in its own contracts
    # directory (server.coordinator_settings): no coordinator path travels in a run config
    contract_hash: str = Field(alias="contract-hash", pattern=r"^[0-9a-f]{64}$")
    model_name: str = Field("", alias="model-name")
    query: str = Field(
        "",
        description="An analytics query (JSON, see common.analytics_math.Query): set, the run "
        "answers it instead of training",
    )

    @model_validator(mode="after")
    def _known(self) -> RunConfig:
        if self.strategy.lower() not in STRATEGY_NAMES:
            raise ValueError(
                f"strategy: '{self.strategy}' is not one of {', '.join(STRATEGY_NAMES)}"
            )
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model: '{self.model}' is not one of {', '.join(MODEL_KINDS)}")
        return self

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        try:
            return cls.model_validate(run_config)
        except ValidationError as err:
            parts = [
                f"{'.'.join(map(str, e['loc'])) or 'run config'}: {e['msg']}" for e in err.errors()
            ]
            raise RunConfigError("invalid run config — " + "; ".join(parts)) from None

    @classmethod
    def key(cls, field: str) -> str:
        """The run-config key (alias) of field `field`, e.g. `rounds` → `num-server-rounds`."""
        return cls.model_fields[field].alias or field

    @classmethod
    def default(cls, key: str) -> Any:
        """The default of run-config `key` (alias or field name); KeyError if it has none."""
        field = cls.field_name(key)
        info = cls.model_fields[field]
        if info.is_required():
            raise KeyError(f"run-config key '{key}' has no default (it is required)")
        return info.default

    @classmethod
    def field_name(cls, key: str) -> str:
        """The field behind run-config `key` (alias or field name); KeyError if none."""
        for name, info in cls.model_fields.items():
            if key in (name, info.alias):
                return name
        raise KeyError(f"unknown run-config key '{key}'")

    @classmethod
    def defaults(cls) -> dict[str, RunConfigValue | None]:
        """Every run-config key with its default; None for required keys (no default)."""
        return {
            cls.key(name): None if info.is_required() else info.default
            for name, info in cls.model_fields.items()
        }

    def to_run_config(self) -> dict[str, RunConfigValue]:
        """Every field by its alias with its value: what goes into Flower's run config."""
        return self.model_dump(by_alias=True)

    def node_config(self, contract_hash: str) -> dict[str, Any]:
        """What every node receives with each train/evaluate message."""
        return {
            "contract-hash": contract_hash,
            "model": self.model,
            "local-epochs": self.local_epochs,
            "sample-rate": self.sample_rate,
            "eval-noise": self.eval_noise,
            "eval-bins": self.eval_bins,
            "final-eval-noise": self.final_eval_noise,
            "drift-reference-noise": self.drift_reference_noise,
            "drift-bins": self.drift_bins,
            "optimizer": self.optimizer,
            "learning-rate": self.learning_rate,
            "learning-rate-final": self.learning_rate_final,
            "max-grad-norm": self.max_grad_norm,
            "noise-multiplier": self.noise_multiplier,
            "target-epsilon": self.target_epsilon,
            "delta": self.delta,
            "total-rounds": self.rounds,
            "seed": self.seed,
        }
