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

ModelKind = Literal["logreg", "mlp"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)  # ("logreg", "mlp")

StrategyName = Literal["fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "fedavgm", "fedadam"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)

OptimizerName = Literal["adam", "sgd"]
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)  # client.training.OPTIMIZERS (tested)

RunConfigValue = str | int | float | bool  # what a Flower run config holds


class RunConfigError(ValueError):
    """The run config is unusable; the message names the key."""


class RunConfig(BaseModel):
    """Every run-config key, by its Flower (kebab-case) alias, with its one default."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    rounds: int = Field(5, alias="num-server-rounds", ge=1, le=1000)
    strategy: str = "fedavg"
    model: str = "logreg"
    local_epochs: int = Field(1, alias="local-epochs", ge=1)
    sample_rate: float = Field(0.02, alias="sample-rate", gt=0, le=1)
    eval_noise: float = Field(10.0, alias="eval-noise", ge=0)
    # logit bins (common.estimation.logit_bin_edges): 12 = width 1.2 over [-8, 4] plus two open
    # ends; fewer bins add less DP noise to every estimate, the within-bin model covers the rest
    eval_bins: int = Field(12, alias="eval-bins", ge=2, le=1000)
    # the update rule on the privatised gradient (post-processing: ε unchanged). Adam's step is
    # independent of the gradient's scale (clipping norm, batch, feature ranges), so one learning
    # rate converges across data sets; evidence in bench/quality_sweep.py (--grid evidence)
    optimizer: OptimizerName = "adam"
    learning_rate: float = Field(0.02, alias="learning-rate", gt=0)
    max_grad_norm: float = Field(1.0, alias="max-grad-norm", gt=0)
    noise_multiplier: float = Field(1.0, alias="noise-multiplier", gt=0)
    target_epsilon: float = Field(0.0, alias="target-epsilon", ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    proximal_mu: float = Field(0.0, alias="proximal-mu", ge=0)
    trim_beta: float = Field(0.2, alias="trim-beta", ge=0, lt=0.5)
    # fedavgm: server SGD step and momentum; fedadam: server Adam's eta and beta_1
    server_learning_rate: float = Field(1.0, alias="server-learning-rate", gt=0)
    server_momentum: float = Field(0.0, alias="server-momentum", ge=0, lt=1)
    # Platt-scale the published model on the nodes' final noised histograms (no extra ε)
    calibrate: bool = True
    min_nodes: int = Field(2, alias="min-nodes", ge=1)
    round_timeout: float = Field(600, alias="round-timeout", gt=0)
    seed: int = 42
    contract_path: str = Field(alias="contract-path", min_length=1)
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
            "optimizer": self.optimizer,
            "learning-rate": self.learning_rate,
            "max-grad-norm": self.max_grad_norm,
            "noise-multiplier": self.noise_multiplier,
            "target-epsilon": self.target_epsilon,
            "delta": self.delta,
            "total-rounds": self.rounds,
            "seed": self.seed,
        }
