"""The node's pipeline up to training: settings, contract check, data loading and validation.

Everything that can fail here raises `NodeError`, whose message is written by us and carries
only names, counts and reasons — never a record's values — because Flower forwards a ClientApp's
exception text to the coordinator.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from client.data_source import DataSourceError, ensure_id, read_records
from client.split import split_mask
from client.validation import QualityReport, validate
from common.contract import Contract, ContractError, load_contract

log = logging.getLogger("atoll.node")


class NodeError(RuntimeError):
    """A refusal or failure whose message is safe to send to the coordinator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code


class NodeSettings(BaseModel):
    """What the node owner set (SuperNode `--node-config`); the coordinator cannot change it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(alias="node-name", min_length=1)
    data: str = Field(min_length=1, description="CSV/Parquet path or SQLAlchemy URL")
    contract: str = Field(min_length=1, description="Path of the node's copy of the contract")
    table: str = ""
    query: str = ""
    id_from_row: bool = Field(default=False, alias="id-from-row")
    test_fraction: float = Field(default=0.2, alias="test-fraction", gt=0, lt=1)
    state_dir: str = Field(default="", alias="state-dir")

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> NodeSettings:
        try:
            return cls.model_validate(node_config)
        except ValidationError as err:
            fields = ", ".join(
                ".".join(map(str, e["loc"])) + f" ({e['msg']})" for e in err.errors()
            )
            raise NodeError(
                "node-config",
                f"SuperNode --node-config is invalid: {fields}; fix and restart the node",
            ) from None


@dataclass
class NodeData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    report: QualityReport


def node_contract(settings: NodeSettings, expected_hash: str | None) -> Contract:
    """Load the owner's contract and refuse a run that was built for another one."""
    try:
        contract = load_contract(settings.contract)
    except ContractError as err:
        raise NodeError("contract", str(err)) from None
    if expected_hash and expected_hash != contract.hash:
        raise NodeError(
            "contract-mismatch",
            f"node '{settings.name}' holds contract {contract.name} v{contract.version} "
            f"(hash {contract.hash[:12]}) but the run uses hash {expected_hash[:12]}; "
            "agree on one contract file before training",
        )
    return contract


def load_node_data(settings: NodeSettings, contract: Contract) -> NodeData:
    """Read, validate and split the node's data. Only counts leave this function's node."""
    try:
        frame = read_records(
            settings.data, table=settings.table or None, query=settings.query or None
        )
        if settings.id_from_row:
            frame = ensure_id(frame, contract.id)
        validated = validate(frame, contract)
    except (DataSourceError, ValueError, KeyError) as err:
        # Our own errors carry names and counts only; anything else is reduced to its type.
        safe = str(err) if _is_atoll_error(err) else f"{type(err).__name__} while reading data"
        raise NodeError("data", f"node '{settings.name}': {safe}") from None
    is_test = split_mask(validated.ids, test_fraction=settings.test_fraction)
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


F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """Let only `NodeError` messages leave the node; log other failures by type and place only."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NodeError as err:
            log.warning("refused: code=%s", err.code)
            raise
        except Exception as err:  # noqa: BLE001 - the point is to sanitize everything
            frame = traceback.extract_tb(err.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            log.error("internal error: type=%s at=%s", type(err).__name__, where)
            raise NodeError(
                "internal", f"{type(err).__name__} at {where}; see the node's log"
            ) from None

    return wrapper  # type: ignore[return-value]
