"""The node's ClientApp handlers, called with real Flower messages outside a runtime.

Proves the order of checks: contract and privacy budget are decided before the data source is
opened (the data is a FIFO with no writer: opening it would block), and that replies carry only
weights and aggregates.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app
from client.node import NodeError
from common.contract import load_contract
from common.encoding import Encoder
from common.model import build_model
from common.synth import generate
from privacy.audit import digest_arrays, load_public_keys, query, verify
from privacy.ledger import Ledger, Policy

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "synthetic.yaml"
CANARY = "CANARYclientapp7f3e"


def _run_config(contract_hash: str, rounds: int = 2) -> dict:
    return {
        "contract-hash": contract_hash,
        "model": "logreg",
        "local-epochs": 1,
        "sample-rate": 0.05,
        "learning-rate": 0.5,
        "max-grad-norm": 1.0,
        "noise-multiplier": 1.0,
        "target-epsilon": 0.0,
        "delta": 1e-5,
        "total-rounds": rounds,
        "eval-noise": 10.0,
        "eval-bins": 20,
    }


def _message(kind: str, config: dict, run_id: int, with_model: bool = False) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
    content = RecordDict({"config": ConfigRecord(config)})
    if with_model:
        n = Encoder(load_contract(CONTRACT)).n_features
        content["arrays"] = ArrayRecord(build_model("logreg", n).state_dict())
    return Message(content, dst_node_id=1, message_type=kind)


def _context(run_id: int, data: Path, state: Path) -> Context:
    cfg = {
        "node-name": "dept-a",
        "data": str(data),
        "contract": str(CONTRACT),
        "state-dir": str(state),
    }
    return Context(run_id=run_id, node_id=1, node_config=cfg, state=RecordDict(), run_config={})


def _call(msg: Message, ctx: Context, timeout: float = 60) -> Message:
    """Run the handler in a thread: if it opens the FIFO it blocks and we time out."""
    box: dict = {}

    def target() -> None:
        try:
            box["reply"] = app(message=msg, context=ctx)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "handler blocked: it opened the data source"
    if "error" in box:
        raise box["error"]
    return box["reply"]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    os.mkfifo(path)
    return path


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    frame = generate(1500, seed=3)
    frame.loc[0, "customer_id"] = CANARY
    frame.loc[1, "plan"] = CANARY
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_over_budget_run_is_refused_before_data_is_opened(tmp_path: Path, fifo: Path) -> None:
    state = tmp_path / "state"
    Ledger.initialize(state, "dept-a", Policy(cap_epsilon=0.5, delta=1e-5)).close_db()
    h = load_contract(CONTRACT).hash
    for kind in (f"{MessageType.QUERY}.rollcall", MessageType.TRAIN, MessageType.EVALUATE):
        with pytest.raises(NodeError) as err:
            _call(
                _message(kind, _run_config(h), 11, kind != f"{MessageType.QUERY}.rollcall"),
                _context(11, fifo, state),
            )
        assert err.value.code == "budget-cap"
        assert "remains" in str(err.value) and "difference" in str(err.value)
    refusals = Ledger(state).refusals()
    assert len(refusals) == 3 and {r["code"] for r in refusals} == {"cap"}


def test_contract_mismatch_and_missing_ledger_refused_before_data(
    tmp_path: Path, fifo: Path
) -> None:
    Ledger.initialize(tmp_path / "state", "dept-a", Policy(cap_epsilon=10, delta=1e-5)).close_db()
    with pytest.raises(NodeError) as err:
        _call(
            _message(MessageType.TRAIN, _run_config("0" * 64), 12, True),
            _context(12, fifo, tmp_path / "state"),
        )
    assert err.value.code == "contract-mismatch"
    with pytest.raises(NodeError) as err:
        _call(
            _message(MessageType.TRAIN, _run_config(load_contract(CONTRACT).hash), 12, True),
            _context(12, fifo, tmp_path / "no-ledger"),
        )
    assert err.value.code == "ledger" and "atoll budget init" in str(err.value)


def test_full_node_protocol_spends_what_it_reports(tmp_path: Path, data_csv: Path) -> None:
    state = tmp_path / "state"
    Ledger.initialize(state, "dept-a", Policy(cap_epsilon=10, delta=1e-5)).close_db()
    h = load_contract(CONTRACT).hash
    cfg = _run_config(h, rounds=2)
    ctx = _context(21, data_csv, state)
    replies = [_call(_message(f"{MessageType.QUERY}.rollcall", cfg, 21), ctx)]
    for rnd in (1, 2):
        replies.append(
            _call(_message(MessageType.TRAIN, {**cfg, "server-round": rnd}, 21, True), ctx)
        )
        replies.append(
            _call(_message(MessageType.EVALUATE, {**cfg, "server-round": rnd}, 21, True), ctx)
        )
    replies.append(_call(_message(f"{MessageType.QUERY}.finish", {}, 21), ctx))
    ledger = Ledger(state)
    status = ledger.status()
    assert status.events == 4 and status.runs[0].status == "closed"
    train_eps = [r.content["metrics"]["epsilon"] for r in replies[1:5:2]]
    assert train_eps[0] < train_eps[1] <= ledger.run_epsilon("21")
    final = replies[-1].content["metrics"]
    assert final["epsilon"] == pytest.approx(ledger.run_epsilon("21"))
    assert final["epsilon"] == pytest.approx(status.runs[0].planned_epsilon)  # all rounds ran
    train = replies[1].content
    assert set(train.keys()) == {"arrays", "metrics"}
    state_dict = train["arrays"].to_torch_state_dict()
    assert all(torch.isfinite(v).all() for v in state_dict.values())
    assert CANARY not in "".join(repr(r.content) for r in replies)
    # the node's audit log proves what left: verified chain, digest of the exact update sent
    keys = load_public_keys([state / "audit-key" / "audit.pub"])
    assert verify(ledger.engine, "node:dept-a", keys).ok
    entries = query(ledger.engine, "node:dept-a", action="reply.sent")
    sent = [e.details for e in entries if e.details["kind"] == "train"]
    assert [d["round"] for d in sent] == [1, 2]
    assert sent[0]["update_sha256"] == digest_arrays(replies[1].content["arrays"])
    everything = "".join(repr(e.details) for e in query(ledger.engine, "node:dept-a"))
    assert "data.validated" in {e.action for e in query(ledger.engine, "node:dept-a")}
    assert CANARY not in everything
    # a rerun of a finished run is refused
    with pytest.raises(NodeError) as err:
        _call(_message(MessageType.TRAIN, {**cfg, "server-round": 3}, 21, True), ctx)
    assert err.value.code == "budget-closed"


def test_data_errors_do_not_leak_values(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Ledger.initialize(state, "dept-a", Policy(cap_epsilon=10, delta=1e-5)).close_db()
    bad = tmp_path / "bad.csv"
    bad.write_text(f"customer_id,{CANARY}\n1,2,3\n")
    with pytest.raises(NodeError) as err:
        _call(
            _message(MessageType.TRAIN, _run_config(load_contract(CONTRACT).hash), 31, True),
            _context(31, bad, state),
        )
    assert err.value.code == "data"
    assert CANARY not in str(err.value)
