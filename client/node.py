"""The node's data pipeline: the owner's contract, then the data read, validated and split.

Everything that can fail here raises `NodeError`, whose message is written by us and carries
codes, field names and counts only — never a record's values, paths, hosts or user names —
because refusals travel to the coordinator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.data_source import DataSourceError, ensure_id, read_records
from client.split import split_mask
from client.validation import QualityReport, validate
from common.contract import Contract, ContractError, load_contract
from common.errors import AtollError

log = logging.getLogger("atoll.node")


class NodeError(AtollError, RuntimeError):
    """A refusal or failure whose message is safe to send to the coordinator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.reason = message


@dataclass
class NodeData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    report: QualityReport


def owner_contract(path: Path) -> Contract:
    """The owner's copy of the contract (the only one this node trusts)."""
    try:
        return load_contract(path)
    except ContractError as err:
        raise NodeError("contract", f"the node's contract is invalid: {err}") from None


def load_node_data(
    source: str,
    contract: Contract,
    *,
    table: str = "",
    query: str = "",
    id_from_row: bool = False,
    test_fraction: float = 0.2,
) -> NodeData:
    """Read, validate and split the node's data. Only counts leave this function."""
    try:
        frame = read_records(source, table=table or None, query=query or None)
        if id_from_row:
            frame = ensure_id(frame, contract.id)
        validated = validate(frame, contract)
    except (DataSourceError, ValueError, KeyError) as err:
        # Our own errors carry names and counts only; anything else is reduced to its type.
        log.warning("data source unusable: %s", err if _is_atoll_error(err) else type(err).__name__)
        raise NodeError(
            "data", f"the node's data does not load ({type(err).__name__}); see the node's log"
        ) from None
    is_test = split_mask(validated.ids, test_fraction=test_fraction)
    y = validated.y if validated.y is not None else np.zeros(len(validated.x), dtype=np.float32)
    return NodeData(
        x_train=validated.x[~is_test],
        y_train=y[~is_test],
        x_test=validated.x[is_test],
        y_test=y[is_test],
        report=validated.report,
    )


def _is_atoll_error(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in {"client", "common", "privacy"}
