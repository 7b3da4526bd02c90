"""A worker's calls to its supervisor: the client's changes, applied to every worker.

`SupervisorLink` stands in for this process's own change paths (the manager's `ModelChanges`,
the data plane's `RegionChanges`): the supervisor prepares and commits the change in every
worker, this one included, through their `WorkerServicer`s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from trtserve.protocol import cluster_pb2 as pb
from trtserve.protocol import cluster_pb2_grpc
from trtserve.server.api.status import error_for_status
from trtserve.server.dataplane.shared_memory import RegionKind
from trtserve.server.models.manager import ModelManager

T = TypeVar("T")


class SupervisorLink:
    """Model and region changes sent to the supervisor, whose refusals are raised here."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = cluster_pb2_grpc.SupervisorStub(self._channel)

    async def load(self, name: str) -> None:
        await _relayed(self._stub.Load, pb.ModelName(name=name))

    async def unload(self, name: str) -> None:
        await _relayed(self._stub.Unload, pb.ModelName(name=name))

    async def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        region = pb.SystemRegion(name=name, key=key, offset=offset, byte_size=byte_size)
        await _relayed(self._stub.RegisterSystem, region)

    async def register_cuda(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        region = pb.CudaRegion(
            name=name, raw_handle=raw_handle, device_id=device_id, byte_size=byte_size
        )
        await _relayed(self._stub.RegisterCuda, region)

    async def unregister(self, kind: RegionKind, name: str) -> None:
        await _relayed(self._stub.Unregister, pb.RegionName(kind=kind.value, name=name))

    async def join(self, index: int, pid: int, manager: ModelManager) -> None:
        """Tell the supervisor this worker serves; returns once every starting worker does."""
        request = pb.JoinRequest(worker=index, pid=pid)
        for model in manager.serving_models():
            request.serving.add(name=model.name, version=model.version)
        for name, reason in manager.unavailable().items():
            request.unavailable.add(name=name, reason=reason)
        await _relayed(self._stub.Join, request)

    async def close(self) -> None:
        await self._channel.close(None)


async def _relayed(call: Callable[[T], Awaitable[object]], request: T) -> None:
    """Make the call; a refusal becomes the server error it stands for, message unchanged."""
    try:
        await call(request)
    except grpc.aio.AioRpcError as error:
        raise error_for_status(error.code(), error.details() or str(error.code())) from None
