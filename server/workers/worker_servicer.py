"""The supervisor's calls into one worker: prepare, commit or abort a load; apply the rest."""

from __future__ import annotations

from typing import Any

from trtserve.protocol import cluster_pb2 as pb
from trtserve.server.dataplane.shared_memory import RegionKind, SharedMemoryRegistry
from trtserve.server.models.manager import ModelManager


class WorkerServicer:
    """Applies a change to this process only; the supervisor has already serialized it."""

    def __init__(self, manager: ModelManager, registry: SharedMemoryRegistry) -> None:
        self._manager = manager
        self._registry = registry

    async def Prepare(self, request: pb.ModelName, context: Any) -> pb.ModelVersions:
        built = await self._manager.prepare(request.name)
        return pb.ModelVersions(name=request.name, versions=sorted(m.version for m in built))

    async def Commit(self, request: pb.Decision, context: Any) -> pb.Done:
        await self._manager.commit(request.name)
        return pb.Done()

    async def Abort(self, request: pb.Decision, context: Any) -> pb.Done:
        await self._manager.abort(request.name, request.reason)
        return pb.Done()

    async def Unload(self, request: pb.ModelName, context: Any) -> pb.Done:
        await self._manager.unload_here(request.name)
        return pb.Done()

    async def RegisterSystem(self, request: pb.SystemRegion, context: Any) -> pb.Done:
        await register_system(self._registry, request)
        return pb.Done()

    async def RegisterCuda(self, request: pb.CudaRegion, context: Any) -> pb.Done:
        await register_cuda(self._registry, request)
        return pb.Done()

    async def Unregister(self, request: pb.RegionName, context: Any) -> pb.Done:
        await self._registry.unregister(RegionKind(request.kind), request.name)
        return pb.Done()


async def register_system(registry: SharedMemoryRegistry, region: pb.SystemRegion) -> None:
    """Register a system region in this process."""
    await registry.register_system(region.name, region.key, region.offset, region.byte_size)


async def register_cuda(registry: SharedMemoryRegistry, region: pb.CudaRegion) -> None:
    """Register a CUDA region in this process."""
    await registry.register_cuda(region.name, region.raw_handle, region.device_id, region.byte_size)
