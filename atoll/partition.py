"""Demo and test silos: `partition_csv` splits one data set into per-department CSV files, one per
node (used by `atoll federate`, the tests and the benches)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.errors import AtollError


class PartitionError(AtollError, ValueError):
    """A data set cannot be split as asked (no such column, too few distinct values)."""


@dataclass(frozen=True)
class Partition:
    name: str
    path: Path
    values: list[str]
    rows: int


def partition_csv(
    csv: Path, column: str, n_nodes: int, out_dir: Path, sep: str | None = None
) -> list[Partition]:
    """Split a CSV by the values of `column` into `n_nodes` silos (largest groups spread first)."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False, sep=sep, engine="python")
    if column not in frame.columns:
        raise PartitionError(
            f"partition column '{column}' is not in {csv.name}; columns: {', '.join(frame.columns)}"
        )
    sizes = frame[column].value_counts()
    if n_nodes < 1 or n_nodes > len(sizes):
        raise PartitionError(
            f"cannot make {n_nodes} nodes from {len(sizes)} distinct values of '{column}'"
        )
    bins: list[list[str]] = [[] for _ in range(n_nodes)]
    load = [0] * n_nodes
    for value, size in sizes.items():  # greedy: biggest group to the lightest node
        i = load.index(min(load))
        bins[i].append(str(value))
        load[i] += int(size)
    parts = []
    for i, values in enumerate(bins, start=1):
        name = f"node-{i}"
        path = out_dir / name / "data.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = frame[frame[column].isin(values)]
        rows.to_csv(path, index=False)
        parts.append(Partition(name=name, path=path, values=values, rows=len(rows)))
    return parts
