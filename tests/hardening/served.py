"""What the hardening tests share: a served repository with its channel, and call outcomes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from server_process import ServerProcess

from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc


@dataclass
class Served:
    """A server process, the repository it serves and a channel to it."""

    process: ServerProcess
    repository: Path
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def uploads(self) -> tpb_grpc.ModelUploadStub:
        return tpb_grpc.ModelUploadStub(self.channel)  # type: ignore[no-untyped-call]


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    """Run a zero-argument call; its status code and details (OK, '' on success)."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@contextlib.contextmanager
def serving(process: ServerProcess, repository: Path) -> Iterator[Served]:
    """A started server with a channel to it; closed, and its clean exit checked, after."""
    channel = grpc.insecure_channel(process.address)
    try:
        yield Served(process, repository, channel)
    finally:
        channel.close()
        assert process.terminate() == 0


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    pause = threading.Event()
    for _ in range(int(timeout * 100)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")
