"""Flower ClientApp: a thin relay between the SuperNode and the owner's node runtime.

This is the coordinator's code (it ships in the signed app), so it is given nothing to misuse:
it never opens the data, the ledger or the audit log, and it imports only flwr, grpc and the
wire stubs (no torch, opacus, pandas, sqlalchemy or scikit-learn — which also keeps the
per-message `flwr-clientapp` start short). Each message is forwarded to the node runtime named
in the SuperNode's `--node-config runtime="unix:/path/node.sock"`; the runtime decides it
against its owner's policy and the relay returns the runtime's reply as records.

With the settings goes the build manifest that ships beside this file in the signed FAB (app id,
version, expiry, signed by the app-signing key): the runtime refuses an expired or older build.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from common import wire
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.protos.atoll.node.v1.runtime_pb2_grpc import NodeRuntimeStub

app = ClientApp()
CALL_TIMEOUT_S = 3600.0  # one local training round; the coordinator's round timeout is shorter
MANIFEST = Path(__file__).resolve().with_name(wire.APP_MANIFEST_FILE)  # in this FAB's install dir


def _settings(msg: Message) -> pb.RunSettings:
    return wire.with_manifest(wire.settings_of(msg.content), MANIFEST)


def _target(context: Context) -> str:
    socket = str(context.node_config.get(wire.RUNTIME_SOCKET, ""))
    return socket if socket.startswith("unix:") else f"unix:{socket}"


def _unavailable(code: grpc.StatusCode) -> pb.Refusal:
    # No path or host in the text: it travels to the coordinator.
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return pb.Refusal(code="request-too-large", message="request exceeds the node's size limit")
    return pb.Refusal(
        code="runtime-unavailable",
        message="this node's runtime is not reachable; its owner must start `atoll node runtime`",
    )


def _relay(
    msg: Message,
    context: Context,
    call: Callable[[NodeRuntimeStub, pb.Caller], RecordDict],
) -> Message:
    who = wire.caller(context.run_id, context.node_id, msg.metadata.message_id)
    try:
        with grpc.insecure_channel(_target(context)) as channel:  # a local Unix socket
            content = call(NodeRuntimeStub(channel), who)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        content = wire.refusal_content(_unavailable(code))
    return Message(content, reply_to=msg)


@app.query("rollcall")
def rollcall(msg: Message, context: Context) -> Message:
    return _relay(
        msg,
        context,
        lambda stub, who: wire.rollcall_content(
            stub.RollCall(
                pb.RollCallRequest(caller=who, settings=_settings(msg)),
                timeout=CALL_TIMEOUT_S,
            )
        ),
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _relay(
        msg,
        context,
        lambda stub, who: wire.train_content(
            stub.Train(
                pb.TrainRequest(
                    caller=who,
                    settings=_settings(msg),
                    weights=wire.weights_of(msg.content),
                ),
                timeout=CALL_TIMEOUT_S,
            )
        ),
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _relay(
        msg,
        context,
        lambda stub, who: wire.evaluate_content(
            stub.Evaluate(
                pb.EvaluateRequest(
                    caller=who,
                    settings=_settings(msg),
                    weights=wire.weights_of(msg.content),
                ),
                timeout=CALL_TIMEOUT_S,
            )
        ),
    )


@app.query("finish")
def finish(msg: Message, context: Context) -> Message:
    return _relay(
        msg,
        context,
        lambda stub, who: wire.finish_content(
            stub.Finish(
                pb.FinishRequest(
                    caller=who,
                    settings=_settings(msg),
                    weights=wire.weights_of(msg.content),
                ),
                timeout=CALL_TIMEOUT_S,
            )
        ),
    )


@app.query("analytics")
def analytics(msg: Message, context: Context) -> Message:
    return _relay(
        msg,
        context,
        lambda stub, who: wire.query_content(
            stub.Query(
                wire.with_manifest(
                    pb.QueryRequest(caller=who, spec=wire.query_spec_of(msg.content)), MANIFEST
                ),
                timeout=CALL_TIMEOUT_S,
            )
        ),
    )
