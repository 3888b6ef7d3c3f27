"""The ClientApp relay (client/client_app.py) and the runtime's local socket, for real.

The relay is the coordinator's code: it must be light (no data libraries) and hold nothing;
the runtime listens on a Unix socket only its owner (or the named group) can open; the wire
stubs in common/protos are exactly what protos/ generates.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers.node import ROOT, node_config, settings, weights

from client.client_app import app
from client.runtime.grpc_server import start
from client.runtime.service import NodeService
from common import wire
from common.synth import generate

HEAVY = ("torch", "opacus", "pandas", "sqlalchemy", "sklearn")


def test_the_relay_imports_no_data_library() -> None:
    code = (
        "import sys, client.client_app; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_committed_stubs_are_what_protos_generate() -> None:
    res = subprocess.run(
        [sys.executable, "protos/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Path, NodeService]]:
    data = tmp_path / "data.csv"
    generate(1500, seed=8).to_csv(data, index=False)
    cfg = node_config(tmp_path, data)
    svc = NodeService(cfg, seed=1)
    server = start(cfg, svc)
    yield cfg.socket, svc
    server.stop(grace=None).wait()


def _context(socket: Path | str, run_id: int = 555) -> Context:
    return Context(
        run_id=run_id,
        node_id=3,
        node_config={wire.RUNTIME_SOCKET: f"unix:{socket}"},
        state=RecordDict(),
        run_config={},
    )


def _message(kind: str, with_weights: bool, **overrides: object) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 555, 3, 1
    s = settings(**overrides)
    cfg = ConfigRecord({wire.SETTINGS_KEYS[f.name]: v for f, v in s.ListFields()})
    arrays = None
    if with_weights:
        arrays = ArrayRecord({t.name: Array(wire.tensor_values(t)) for t in weights().tensors})
    return Message(wire.request(cfg, arrays), dst_node_id=3, message_type=kind)


def test_socket_is_owner_only(runtime: tuple[Path, NodeService]) -> None:
    socket, _svc = runtime
    mode = stat.S_IMODE(socket.stat().st_mode)
    assert stat.S_ISSOCK(socket.stat().st_mode) and mode == 0o600


def test_relay_round_trip_through_the_real_socket(runtime: tuple[Path, NodeService]) -> None:
    socket, svc = runtime
    ctx = _context(socket)
    joined = wire.joined_of(app(message=_message(wire.ROLLCALL, False), context=ctx))
    assert joined.node_name == "dept-a" and joined.size_bucket == "1000-2000"  # type: ignore[union-attr]
    trained_msg = app(message=_message(wire.TRAIN, True), context=ctx)
    trained = wire.trained_of(trained_msg)
    assert trained.steps == 20, trained  # type: ignore[union-attr]
    assert trained_msg.content[wire.METRICS][wire.NUM_EXAMPLES] == 1.0  # public, equal weights
    evaluated = wire.evaluated_of(app(message=_message(wire.EVALUATE, True), context=ctx))
    assert len(evaluated.hist_pos) == 20  # type: ignore[union-attr]
    refused = wire.refusal_of(
        app(message=_message(wire.TRAIN, True, eval_bins=10**7), context=ctx)
    )
    assert refused is not None and refused.code == "limit-eval-bins"
    finished = wire.finished_of(app(message=_message(wire.FINISH, False), context=ctx))
    assert finished.budget.epsilon_run > 0  # type: ignore[union-attr]
    assert svc.ledger.status().events == 2


def test_an_unreachable_runtime_is_a_refusal_without_its_path(tmp_path: Path) -> None:
    gone = tmp_path / "secret-dir" / "none.sock"
    reply = app(message=_message(wire.ROLLCALL, False), context=_context(gone))
    refusal = wire.refusal_of(reply)
    assert refusal is not None and refusal.code == "runtime-unavailable"
    assert "secret-dir" not in refusal.message


def test_oversized_requests_are_refused_by_the_socket(runtime: tuple[Path, NodeService]) -> None:
    socket, _svc = runtime
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        from common.protos.atoll.node.v1 import runtime_pb2 as pb
        from common.protos.atoll.node.v1.runtime_pb2_grpc import NodeRuntimeStub

        big = pb.Weights(tensors=[pb.Tensor(name="x", shape=[1], data=b"\0" * (20 << 20))])
        with pytest.raises(grpc.RpcError) as err:
            NodeRuntimeStub(channel).Train(pb.TrainRequest(weights=big), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
