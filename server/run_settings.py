"""Compatibility names: a run's settings are `common.run_config.RunConfig` (one source of truth)."""

from __future__ import annotations

from common.run_config import MODEL_KINDS, STRATEGY_NAMES, RunConfig, RunConfigError

RunSettings = RunConfig
RunSettingsError = RunConfigError

__all__ = [
    "MODEL_KINDS",
    "STRATEGY_NAMES",
    "RunConfig",
    "RunConfigError",
    "RunSettings",
    "RunSettingsError",
]
