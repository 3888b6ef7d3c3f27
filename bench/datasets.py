"""The real data sets as silos, through the node's own pipeline (read → validate → encode → split).

The CSV is read once from ../shared/data (never copied into the repository), given row-number ids
if it has none (`client.data_source.ensure_id`, on the whole file so ids are unique across silos),
split into silos with `atoll.partition.partition_csv` in a scratch directory, and each silo is
loaded exactly as a node loads it (`client.node.load_node_data`: contract validation, encoding,
`client.split.split_mask` on the ids). So the global test set is the union of the silos' test rows
and is the same for every method.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atoll.partition import Partition, partition_csv
from bench.common import BANK, CONTRACTS, TELCO, WORK
from client.data_source import ensure_id, read_records
from client.node import load_node_data
from common.contract import Contract, load_contract


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    csv: Path
    contract: Path
    partition_by: str
    nodes: int


DATASETS: dict[str, DatasetSpec] = {
    "telco": DatasetSpec("telco", TELCO, CONTRACTS / "telco_churn.yaml", "Contract", 3),
    "bank": DatasetSpec("bank", BANK, CONTRACTS / "bank_propensity.yaml", "job", 5),
}


@dataclass
class Silo:
    name: str
    values: list[str]
    csv: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class SiloData:
    spec: DatasetSpec
    contract: Contract
    silos: list[Silo]

    @property
    def n_features(self) -> int:
        return int(self.silos[0].x_train.shape[1])

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([s.x_train for s in self.silos]),
            np.concatenate([s.y_train for s in self.silos]),
        )

    def global_test(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([s.x_test for s in self.silos]),
            np.concatenate([s.y_test for s in self.silos]),
        )


def write_with_ids(spec: DatasetSpec, contract: Contract, out: Path) -> Path:
    """The data set as a comma-separated CSV that has the contract's id column."""
    frame = ensure_id(read_records(spec.csv), contract.id)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return out


def load_silos(name: str, workdir: Path | None = None) -> SiloData:
    """Partition data set `name` into its silos and load each one as its node would."""
    spec = DATASETS[name]
    if not spec.csv.exists():
        raise FileNotFoundError(f"{spec.csv} not found: the real data sets live in ../shared/data")
    contract = load_contract(spec.contract)
    work = (workdir or WORK / "silos") / name
    shutil.rmtree(work, ignore_errors=True)
    full = write_with_ids(spec, contract, work / "full.csv")
    parts: list[Partition] = partition_csv(full, spec.partition_by, spec.nodes, work)
    silos = []
    for part in parts:
        data = load_node_data(str(part.path), contract)  # as the runtime's DataCache loads it
        silos.append(
            Silo(
                name=part.name,
                values=part.values,
                csv=part.path,
                x_train=data.x_train,
                y_train=data.y_train,
                x_test=data.x_test,
                y_test=data.y_test,
            )
        )
    return SiloData(spec=spec, contract=contract, silos=silos)
