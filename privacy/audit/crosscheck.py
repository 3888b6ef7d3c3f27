"""Update digests and the node/coordinator cross-check."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from privacy.audit.canonical import (
    _ARRAYS_DOMAIN,
    CROSSCHECK_FIELDS,
    REPLY_SENT,
    ROUND_REPLY,
    canonical_json,
)
from privacy.audit.entries import AuditEntry


def _as_numpy(value: Any, name: str) -> np.ndarray:
    """numpy view of an ndarray, torch tensor or Flower Array, without importing torch."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor
        return np.asarray(value.detach().cpu().numpy())
    if hasattr(value, "numpy"):  # flwr.app.Array
        return np.asarray(value.numpy())
    raise TypeError(f"array '{name}' is a {type(value).__name__}; pass numpy arrays or tensors")


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """sha256 over an update's exact bytes: per name (sorted) its dtype, shape and data.

    Accepts a torch state dict, a Flower ArrayRecord or a dict of numpy arrays, so the node
    (before sending) and the coordinator (after receiving) get the same digest for the same update.
    """
    digest = hashlib.sha256(_ARRAYS_DOMAIN)
    for name in sorted(arrays):
        array = _as_numpy(arrays[name], name)
        if array.dtype.hasobject:
            raise TypeError(f"array '{name}' has object dtype; updates are numeric arrays")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header = canonical_json(
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
        ).encode("ascii")
        data = array.tobytes()
        digest.update(len(header).to_bytes(8, "big") + header)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


class Mismatch(BaseModel):
    """One disagreement between the coordinator's and a node's record of a reply."""

    run: str
    round: int | None
    node: str
    kind: str
    problem: Literal[
        "differs", "missing_on_node", "missing_on_coordinator", "duplicate", "malformed"
    ]
    field: str | None = None
    coordinator_value: str | int | float | None = None
    node_value: str | int | float | None = None
    coordinator_seq: int | None = None
    node_seq: int | None = None

    def describe(self) -> str:
        where = f"run {self.run} round {self.round} node {self.node} ({self.kind})"
        if self.problem == "differs":
            return (
                f"{where}: {self.field} differs — coordinator {self.coordinator_value} "
                f"(seq {self.coordinator_seq}), node {self.node_value} (seq {self.node_seq})"
            )
        return f"{where}: {self.problem.replace('_', ' ')}"


_Key = tuple[str, int, str, str]  # (run, round, node, kind)


def _reply_index(
    entries: Iterable[AuditEntry], action: str, side: Literal["coordinator", "node"]
) -> tuple[dict[_Key, AuditEntry], list[Mismatch]]:
    """Entries of one side by key, plus malformed and duplicate ones as mismatches."""
    index: dict[_Key, AuditEntry] = {}
    problems: list[Mismatch] = []
    for entry in entries:
        if entry.action != action:
            continue
        d = entry.details
        run, rnd, node, kind = d.get("run"), d.get("round"), d.get("node"), d.get("kind", "train")
        cseq, nseq = (entry.seq, None) if side == "coordinator" else (None, entry.seq)
        if run is None or not isinstance(rnd, int) or not isinstance(node, str):
            problems.append(
                Mismatch(
                    run=str(run),
                    round=None,
                    node=str(node),
                    kind=str(kind),
                    problem="malformed",
                    coordinator_seq=cseq,
                    node_seq=nseq,
                )
            )
            continue
        key = (str(run), rnd, node, str(kind))
        if key in index:
            problems.append(
                Mismatch(
                    run=key[0],
                    round=rnd,
                    node=node,
                    kind=key[3],
                    problem="duplicate",
                    coordinator_seq=cseq,
                    node_seq=nseq,
                )
            )
            continue
        index[key] = entry
    return index, problems


def _scalar(value: Any) -> str | int | float | None:
    return value if value is None or isinstance(value, str | int | float) else canonical_json(value)


def _compare(key: _Key, coord: AuditEntry | None, node: AuditEntry | None) -> list[Mismatch]:
    """Mismatches of one (run, round, node, kind) between the two sides."""
    run, rnd, name, kind = key
    if coord is None or node is None:
        return [
            Mismatch(
                run=run,
                round=rnd,
                node=name,
                kind=kind,
                problem="missing_on_coordinator" if coord is None else "missing_on_node",
                coordinator_seq=coord.seq if coord else None,
                node_seq=node.seq if node else None,
            )
        ]
    return [
        Mismatch(
            run=run,
            round=rnd,
            node=name,
            kind=kind,
            problem="differs",
            field=field,
            coordinator_value=_scalar(coord.details.get(field)),
            node_value=_scalar(node.details.get(field)),
            coordinator_seq=coord.seq,
            node_seq=node.seq,
        )
        for field in CROSSCHECK_FIELDS
        if coord.details.get(field) != node.details.get(field)
    ]


def crosscheck(
    coordinator_entries: Iterable[AuditEntry],
    node_entries: Iterable[AuditEntry],
    *,
    nodes: Iterable[str] | None = None,
    run: str | None = None,
) -> list[Mismatch]:
    """Compare the coordinator's `round.reply` entries with nodes' `reply.sent` entries.

    Only coordinator entries for `nodes` are compared (default: the nodes named in
    `node_entries`, i.e. the node logs given); `run` limits both sides to one run.
    """
    theirs, node_problems = _reply_index(node_entries, REPLY_SENT, "node")
    ours, coord_problems = _reply_index(coordinator_entries, ROUND_REPLY, "coordinator")
    names = set(nodes) if nodes is not None else {key[2] for key in theirs}

    def wanted(run_id: str, node: str) -> bool:
        return node in names and (run is None or run_id == run)

    ours = {k: v for k, v in ours.items() if wanted(k[0], k[2])}
    theirs = {k: v for k, v in theirs.items() if wanted(k[0], k[2])}
    problems = [p for p in node_problems if run is None or p.run == run]
    problems += [p for p in coord_problems if wanted(p.run, p.node) or p.problem == "malformed"]
    for key in sorted(ours.keys() | theirs.keys()):
        problems.extend(_compare(key, ours.get(key), theirs.get(key)))
    return problems
