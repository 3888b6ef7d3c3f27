"""The shipped contracts load and match the real data; broken contracts are refused by field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.data_source import read_records
from common.contract import (
    BinaryFeature,
    CategoricalFeature,
    ContractError,
    NumericFeature,
    load_contract,
    parse_contract,
)

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
SHIPPED = ["telco_churn.yaml", "bank_propensity.yaml", "synthetic.yaml"]


def minimal() -> dict[str, Any]:
    return {
        "name": "mini",
        "version": 1,
        "task": "churn",
        "label": {"column": "churned", "positive": "yes"},
        "id": "cid",
        "drop": ["email"],
        "features": [
            {"name": "age", "type": "numeric", "min": 18, "max": 100},
            {"name": "plan", "type": "categorical", "vocabulary": ["a", "b"]},
            {"name": "autopay", "type": "binary"},
        ],
    }


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ContractError) as info:
        parse_contract(data, source="'mini.yaml'")
    return str(info.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_contracts_load(name: str) -> None:
    contract = load_contract(CONTRACTS / name)
    assert contract.features
    assert contract.id not in contract.feature_names
    assert contract.label.column not in contract.feature_names
    assert len(contract.hash) == 64


def test_telco_contract_covers_the_real_columns(telco_csv: Path) -> None:
    contract = load_contract(CONTRACTS / "telco_churn.yaml")
    frame = read_records(telco_csv)
    assert contract.name == "telco-churn" and contract.task == "churn"
    assert contract.drop == ["gender"] and "gender" not in contract.feature_names
    assert contract.id == "customerID" and contract.label.column == "Churn"
    expected = set(frame.columns) - {"gender", "customerID", "Churn"}
    assert set(contract.feature_names) == expected
    _assert_vocabularies_cover(contract, frame)
    total = contract.feature("TotalCharges")
    assert isinstance(total, NumericFeature) and total.missing == "impute" and total.impute == 0
    senior = contract.feature("SeniorCitizen")
    assert isinstance(senior, BinaryFeature) and senior.true_values == ["1"]


def test_bank_contract_covers_the_real_columns(bank_csv: Path) -> None:
    contract = load_contract(CONTRACTS / "bank_propensity.yaml")
    frame = read_records(bank_csv)
    assert contract.name == "bank-propensity" and contract.task == "propensity"
    assert contract.drop == ["duration"] and contract.id == "customer_id"
    assert "customer_id" not in frame.columns  # bank-full has no id: the node must add one
    assert set(contract.feature_names) == set(frame.columns) - {"duration", "y"}
    _assert_vocabularies_cover(contract, frame)
    pdays = contract.feature("pdays")
    assert isinstance(pdays, NumericFeature) and (pdays.min, pdays.max) == (-1, 871)


def _assert_vocabularies_cover(contract, frame) -> None:
    for f in contract.features:
        values = set(frame[f.name].str.strip())
        if isinstance(f, CategoricalFeature):
            assert values == set(f.vocabulary), f.name
        elif isinstance(f, BinaryFeature):
            assert values <= set(f.true_values) | set(f.false_values), f.name


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["features"][1].update(vocabulary=[]), ["vocabulary", "'plan'", "at least"]),
        (lambda d: d["features"][1].update(vocabulary=["a", "a"]), ["vocabulary", "duplicate"]),
        (lambda d: d.pop("label"), ["label", "Field required"]),
        (lambda d: d["label"].pop("positive"), ["label.positive"]),
        (lambda d: d["features"].append(dict(d["features"][0])), ["duplicate", "'age'"]),
        (
            lambda d: d["features"].append({"name": "cid", "type": "binary"}),
            ["id", "'cid'", "also declared as a feature"],
        ),
        (
            lambda d: d["features"].append({"name": "churned", "type": "binary"}),
            ["label.column", "'churned'"],
        ),
        (lambda d: d["drop"].append("age"), ["drop", "'age'"]),
        (lambda d: d["features"][0].update(max=10), ["features.0", "'age'", "max"]),
        (lambda d: d["features"][0].update(max=18), ["'age'", "max", "greater than min"]),
        (lambda d: d["features"][0].update(max=float("inf")), ["features.0.max", "finite"]),
        (lambda d: d["features"][0].update(missing="impute"), ["'age'", "impute"]),
        (
            lambda d: d["features"][0].update(missing="impute", impute=5),
            ["'age'", "impute", "within"],
        ),
        (
            lambda d: d["features"][0].update(transform="log1p", min=-1),
            ["'age'", "log1p", "min > -1"],
        ),
        (lambda d: d["features"][0].update(center=50, scale=0), ["'age'", "scale must be > 0"]),
        (lambda d: d["features"][0].update(center=50), ["'age'", "'center' and 'scale'"]),
        (lambda d: d["features"][2].update(type="text"), ["features.2", "'autopay'", "text"]),
        (lambda d: d["features"][2].update(true_values=["y"], false_values=["y"]), ["both"]),
        (lambda d: d.update(task="fraud"), ["task"]),
        (lambda d: d.update(colour="red"), ["colour", "not permitted"]),
        (lambda d: d.update(features=[]), ["features"]),
        (lambda d: d.update(name="Has Spaces"), ["name"]),
    ],
)
def test_broken_contracts_are_refused_naming_the_field(mutate, expected: list[str]) -> None:
    data = minimal()
    mutate(data)
    message = refused(data)
    assert message.startswith("invalid data contract 'mini.yaml'")
    for part in expected:
        assert part in message


def test_unquoted_yaml_booleans_get_a_quoting_hint(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()).replace("- a\n", "- Yes\n", 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ContractError, match=r"features\.1\.vocabulary\.0 .*'plan'.*quote"):
        load_contract(path)


def test_unreadable_contract_files(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read"):
        load_contract(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ContractError, match="not valid YAML"):
        load_contract(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ContractError, match="mapping"):
        load_contract(bad)


def test_hash_is_stable_under_yaml_reformatting(tmp_path: Path) -> None:
    original = load_contract(CONTRACTS / "telco_churn.yaml")
    data = yaml.safe_load((CONTRACTS / "telco_churn.yaml").read_text())
    # Different key order, flow style, floats instead of ints, no comments.
    data = dict(reversed(list(data.items())))
    for f in data["features"]:
        if f["type"] == "numeric":
            f["min"], f["max"] = float(f["min"]), float(f["max"])
    reformatted = tmp_path / "reformatted.yaml"
    reformatted.write_text(yaml.safe_dump(data, default_flow_style=True, sort_keys=True))
    assert reformatted.read_text() != (CONTRACTS / "telco_churn.yaml").read_text()
    assert load_contract(reformatted).hash == original.hash


def test_hash_changes_with_anything_that_changes_the_encoding() -> None:
    base = parse_contract(minimal()).hash
    assert parse_contract(minimal()).hash == base

    changed = copy.deepcopy(minimal())
    changed["features"][1]["vocabulary"] = ["a", "b", "c"]
    assert parse_contract(changed).hash != base

    reordered = copy.deepcopy(minimal())
    reordered["features"][1]["vocabulary"] = ["b", "a"]  # one-hot columns swap
    assert parse_contract(reordered).hash != base

    ranged = copy.deepcopy(minimal())
    ranged["features"][0]["max"] = 101
    assert parse_contract(ranged).hash != base

    transformed = copy.deepcopy(minimal())
    transformed["features"][0]["transform"] = "log1p"
    assert parse_contract(transformed).hash != base

    standardised = copy.deepcopy(transformed)
    standardised["features"][0].update(center=4.0, scale=0.5)
    assert len({base, parse_contract(transformed).hash, parse_contract(standardised).hash}) == 3
