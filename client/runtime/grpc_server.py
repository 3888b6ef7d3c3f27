"""The node runtime on a local gRPC socket: `atoll node runtime --config node.toml`.

Local only: a Unix socket, mode 0600 (owner only), or 0660 with the group named by
`socket-group` (the SuperNode's user) so the relay can connect and nobody else can. Requests
are bounded in size; the service decides them one at a time.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
import torch

from client.runtime.config import NodeConfig
from client.runtime.service import NodeService
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.protos.atoll.node.v1 import runtime_pb2_grpc as pb_grpc

log = logging.getLogger("atoll.runtime")
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # weights of the contract's models are far smaller


class _Servicer(pb_grpc.NodeRuntimeServicer):
    def __init__(self, service: NodeService) -> None:
        self.service = service

    def RollCall(
        self, request: pb.RollCallRequest, context: grpc.ServicerContext
    ) -> pb.RollCallReply:  # noqa: N802
        return self.service.rollcall(request)

    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> pb.TrainReply:  # noqa: N802
        return self.service.train(request)

    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.ServicerContext
    ) -> pb.EvaluateReply:  # noqa: N802
        return self.service.evaluate(request)

    def Finish(self, request: pb.FinishRequest, context: grpc.ServicerContext) -> pb.FinishReply:  # noqa: N802
        return self.service.finish(request)

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.QueryReply:  # noqa: N802
        return self.service.query(request)


def _bind(server: grpc.Server, socket: Path, group: str) -> None:
    socket.parent.mkdir(parents=True, exist_ok=True)
    if socket.exists() or socket.is_symlink():
        socket.unlink()  # a stale socket of an earlier run
    old = os.umask(0o177)  # the socket is born 0600: no window in which others may connect
    try:
        server.add_insecure_port(f"unix:{socket}")
        server.start()
    finally:
        os.umask(old)
    if group:
        os.chown(socket, -1, grp.getgrnam(group).gr_gid)
        os.chmod(socket, 0o660)
    else:
        os.chmod(socket, 0o600)


def start(config: NodeConfig, service: NodeService | None = None) -> grpc.Server:
    """Serve `config`'s node on its socket (returns the started server)."""
    torch.set_num_threads(config.torch_threads)
    service = service or NodeService(config)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="atoll-runtime"),
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_REQUEST_BYTES),
        ],
    )
    pb_grpc.add_NodeRuntimeServicer_to_server(_Servicer(service), server)
    _bind(server, config.socket, config.socket_group)
    return server


def serve(config: NodeConfig) -> None:
    """Serve until SIGTERM/SIGINT; the socket is removed on the way out."""
    server = start(config)
    log.info("node runtime %s serving on %s", config.name, config.socket)
    print(f"ATOLL runtime ready node={config.name}", flush=True)
    stop = threading.Event()

    def _on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    server.stop(grace=5).wait()
    with contextlib.suppress(FileNotFoundError):
        config.socket.unlink()
