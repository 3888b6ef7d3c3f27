"""A training run's settings, read from Flower's run config (pyproject + `--run-config`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.model import MODEL_KINDS
from server.strategies import STRATEGIES


class RunSettingsError(ValueError):
    """The run config is unusable; the message names the key."""


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    rounds: int = Field(3, alias="num-server-rounds", ge=1, le=1000)
    strategy: str = "fedavg"
    model: str = "logreg"
    local_epochs: int = Field(1, alias="local-epochs", ge=1)
    sample_rate: float = Field(0.02, alias="sample-rate", gt=0, le=1)
    eval_noise: float = Field(10.0, alias="eval-noise", ge=0)
    eval_bins: int = Field(20, alias="eval-bins", ge=2, le=1000)
    learning_rate: float = Field(0.5, alias="learning-rate", gt=0)
    max_grad_norm: float = Field(1.0, alias="max-grad-norm", gt=0)
    noise_multiplier: float = Field(1.0, alias="noise-multiplier", gt=0)
    target_epsilon: float = Field(0.0, alias="target-epsilon", ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    proximal_mu: float = Field(0.0, alias="proximal-mu", ge=0)
    trim_beta: float = Field(0.2, alias="trim-beta", ge=0, lt=0.5)
    min_nodes: int = Field(2, alias="min-nodes", ge=1)
    round_timeout: float = Field(600, alias="round-timeout", gt=0)
    seed: int = 42
    contract_path: str = Field(alias="contract-path", min_length=1)
    registry_url: str = Field(alias="registry-url", min_length=1)
    model_name: str = Field("", alias="model-name")
    audit_key: str = Field("", alias="audit-key", description="Coordinator's Ed25519 audit key")

    @model_validator(mode="after")
    def _known(self) -> RunSettings:
        if self.strategy.lower() not in STRATEGIES:
            raise ValueError(f"strategy: '{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model: '{self.model}' is not one of {', '.join(MODEL_KINDS)}")
        return self

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        try:
            return cls.model_validate(run_config)
        except ValidationError as err:
            parts = [
                f"{'.'.join(map(str, e['loc'])) or 'run config'}: {e['msg']}" for e in err.errors()
            ]
            raise RunSettingsError("invalid run config — " + "; ".join(parts)) from None

    def node_config(self, contract_hash: str) -> dict[str, Any]:
        """What every node receives with each train/evaluate message."""
        return {
            "contract-hash": contract_hash,
            "model": self.model,
            "local-epochs": self.local_epochs,
            "sample-rate": self.sample_rate,
            "eval-noise": self.eval_noise,
            "eval-bins": self.eval_bins,
            "learning-rate": self.learning_rate,
            "max-grad-norm": self.max_grad_norm,
            "noise-multiplier": self.noise_multiplier,
            "target-epsilon": self.target_epsilon,
            "delta": self.delta,
            "total-rounds": self.rounds,
            "seed": self.seed,
        }
