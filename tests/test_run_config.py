"""One source of truth for run settings: RunConfig's defaults, pyproject's app config, the CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from common.run_config import (
    MODEL_KINDS,
    OPTIMIZER_NAMES,
    STRATEGY_NAMES,
    RunConfig,
    RunConfigError,
)

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"contract-hash": "c" * 64}  # a contract by hash, never a coordinator path


def _app_config() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


# ---- pyproject parity --------------------------------------------------------------------------
def test_pyproject_lists_every_key_with_runconfigs_default() -> None:
    app, defaults = _app_config(), RunConfig.defaults()
    assert set(app) - set(defaults) == set(), "pyproject keys RunConfig does not know"
    assert set(defaults) - set(app) == set(), "RunConfig keys missing from pyproject"
    for key, default in defaults.items():
        expected = "" if default is None else default  # required keys: "" in pyproject
        assert app[key] == expected and type(app[key]) is type(expected), (key, app[key], default)


def test_required_keys_have_no_default_and_the_empty_pyproject_value_is_refused() -> None:
    required = {k for k, v in RunConfig.defaults().items() if v is None}
    assert required == set(REQUIRED)
    with pytest.raises(RunConfigError, match="contract-hash"):
        RunConfig.from_run_config(_app_config())  # Flower's defaults alone are not a run


def test_to_run_config_gives_every_key_by_alias_and_round_trips() -> None:
    settings = RunConfig.from_run_config({**REQUIRED, "num-server-rounds": 7, "seed": 1})
    rc = settings.to_run_config()
    assert set(rc) == set(_app_config())
    assert rc["num-server-rounds"] == 7 and rc["sample-rate"] == RunConfig.default("sample-rate")
    assert RunConfig.from_run_config(rc) == settings
    assert all(isinstance(v, str | int | float | bool) for v in rc.values())


def test_keys_and_defaults_by_field_or_alias() -> None:
    assert RunConfig.key("rounds") == "num-server-rounds" and RunConfig.key("seed") == "seed"
    assert RunConfig.default("rounds") == RunConfig.default("num-server-rounds") == 10
    with pytest.raises(KeyError):
        RunConfig.default("contract-hash")  # required: no default
    with pytest.raises(KeyError):
        RunConfig.default("no-such-key")


def test_node_config_is_kept() -> None:
    node = RunConfig.from_run_config(REQUIRED).node_config("abc")
    assert node["contract-hash"] == "abc" and node["total-rounds"] == 10
    assert node["sample-rate"] == 0.1 and node["eval-noise"] == 50.0
    assert node["final-eval-noise"] == 4.5
    assert node["optimizer"] == "adam" and node["learning-rate"] == 0.05


def test_the_defaults_a_new_run_gets() -> None:
    """The chosen defaults (evidence: bench/quality_sweep.py, README "Training defaults")."""
    d = RunConfig.from_run_config(REQUIRED)
    assert (d.optimizer, d.learning_rate, d.max_grad_norm) == ("adam", 0.05, 0.0)  # 0: auto
    assert (d.strategy, d.model, d.rounds, d.local_epochs, d.sample_rate) == (
        "fedavg",
        "additive",
        10,
        1,
        0.1,
    )
    assert (d.eval_noise, d.final_eval_noise, d.eval_bins, d.calibrate) == (50.0, 4.5, 12, True)
    assert d.noise_multiplier == 2.0
    assert (d.server_learning_rate, d.server_momentum) == (1.0, 0.0)


def test_the_run_configs_optimizer_and_final_evaluation_reach_the_node() -> None:
    """Through the wire mapping the relay uses (common.wire): what the node admits."""
    from common import wire

    rc = RunConfig.from_run_config({**REQUIRED, "optimizer": "sgd", "final-eval-noise": 6.0})
    record = wire.settings_record(rc.node_config("abc"))
    settings = wire.settings_of(wire.request(record))
    assert (settings.optimizer, settings.final_eval_noise) == ("sgd", 6.0)
    assert settings.eval_noise == rc.eval_noise and settings.learning_rate == rc.learning_rate


def test_optimizer_names_are_the_nodes() -> None:
    from client.training.config import OPTIMIZERS

    assert set(OPTIMIZER_NAMES) == set(OPTIMIZERS)
    assert RunConfig.from_run_config({**REQUIRED, "optimizer": "sgd"}).optimizer == "sgd"


# ---- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", 0),
        ("num-server-rounds", 1001),
        ("sample-rate", 0),
        ("sample-rate", 1.5),
        ("eval-noise", -1),
        ("eval-bins", 1),
        ("learning-rate", 0),
        ("optimizer", "lbfgs"),
        ("server-learning-rate", 0),
        ("server-momentum", 1.0),
        ("server-momentum", -0.1),
        ("calibrate", "maybe"),
        ("noise-multiplier", 0),
        ("delta", 1),
        ("trim-beta", 0.5),
        ("min-nodes", 0),
        ("round-timeout", 0),
        ("local-epochs", 0),
        ("strategy", "fedfoo"),
        ("model", "xgboost"),
        ("contract-hash", ""),
        ("contract-hash", "/srv/contracts/telco.yaml"),  # a path is not a hash
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(RunConfigError, match=key) as err:
        RunConfig.from_run_config({**REQUIRED, key: value})
    assert str(err.value).startswith("invalid run config")


def test_names_are_shared_with_the_model_and_strategy_registries() -> None:
    from common.model import MODEL_KINDS as model_kinds
    from server.run_settings import RunSettings, RunSettingsError
    from server.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES
    assert model_kinds == MODEL_KINDS == ("logreg", "mlp", "additive")
    assert RunSettings is RunConfig and RunSettingsError is RunConfigError
    assert RunConfig.from_run_config({**REQUIRED, "strategy": "FedProx"}).strategy == "FedProx"


def test_run_config_module_stays_light() -> None:
    code = (
        "import sys, common.run_config; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'numpy'}); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---- the CLI -----------------------------------------------------------------------------------
@pytest.fixture
def cli() -> Any:
    """atoll.cli, imported here so the tests above run whatever the CLI's own imports need."""
    from atoll import cli

    return cli


def test_build_run_config_leaves_out_options_not_given(cli: Any) -> None:
    options = {"rounds": None, "strategy": "fedprox", "sample_rate": None, "eval_noise": 0.0}
    assert cli.build_run_config(options) == {"strategy": "fedprox", "eval-noise": 0.0}
    assert cli.build_run_config({"rounds": None}, ["round-timeout=30", "seed=3"]) == {
        "round-timeout": 30,
        "seed": 3,
    }


def test_build_run_config_refuses_unknown_set_keys(
    cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(cli.typer.Exit):
        cli.build_run_config({}, ["round-timout=30"])
    assert "'round-timout' is not a run-config key" in capsys.readouterr().err


def _federate_config(cli: Any, monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "run_federation", lambda **kw: seen.update(kw))
    res = CliRunner().invoke(cli.app, ["federate", *args])
    assert res.exit_code == 0, res.output
    return dict(seen["config"])


def test_federate_passes_only_the_options_given(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _federate_config(cli, monkeypatch) == {}
    assert _federate_config(cli, monkeypatch, "--rounds", "2", "--eval-noise", "0") == {
        "num-server-rounds": 2,
        "eval-noise": 0.0,
    }


def test_demo_passes_only_the_options_given(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "run_federation", lambda **kw: seen.update(kw))
    monkeypatch.setattr(cli, "TELCO", ROOT / "contracts" / "telco_churn.yaml")  # any existing file
    assert CliRunner().invoke(cli.app, ["demo", "--no-serve"]).exit_code == 0
    assert seen["config"] == {}
    assert CliRunner().invoke(cli.app, ["demo", "--no-serve", "--rounds", "4"]).exit_code == 0
    assert seen["config"] == {"num-server-rounds": 4}


def test_run_submits_only_the_options_given(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import atoll.runs

    submitted: list[dict[str, Any]] = []

    def follow_run(**kw: Any) -> Any:
        submitted.append(kw["config"])
        return SimpleNamespace(exit_code=0, model_version=1, model_name="m", run_id=1, seconds=1.0)

    monkeypatch.setattr(atoll.runs, "follow_run", follow_run)
    monkeypatch.setattr(cli, "write_connection", lambda *a: None)
    base = ["run", "--contract", "c.yaml", "--flwr-home", str(tmp_path)]
    res = CliRunner().invoke(cli.app, base)
    assert res.exit_code == 0, res.output
    assert submitted[-1] == {"contract-path": "c.yaml"}  # no database URL, no key path
    res = CliRunner().invoke(cli.app, [*base, "--sample-rate", "0.1", "--set", "seed=7"])
    assert res.exit_code == 0, res.output
    assert submitted[-1]["sample-rate"] == 0.1 and submitted[-1]["seed"] == 7
    assert "num-server-rounds" not in submitted[-1] and "strategy" not in submitted[-1]


@pytest.mark.parametrize(("command", "option"), [("run", "sample-rate"), ("federate", "rounds")])
def test_help_shows_the_apps_default(cli: Any, command: str, option: str) -> None:
    res = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
    line = next(ln for ln in res.output.splitlines() if f"--{option} " in ln)
    assert f"[default: the app's, {RunConfig.default(option)}]" in line
