"""The load generator's shared-memory regions: one per worker, holding its inputs and outputs.

`worker_messages` gives the requests the workers send, for the length of a run: the inline
request for every worker with kind "none"; else each worker's own. `prepare` sends the inline
request once (its outputs size the regions), creates the regions, writes the inputs,
registers them and builds each worker's request, which references its region for every input
and output (BYTES outputs, of unknown size, stay inline). `release` unregisters and destroys
them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Literal

from trtserve.client import request as rq
from trtserve.client.aio import AsyncInferenceClient
from trtserve.client.cuda_shared_memory import CudaSharedMemoryRegion
from trtserve.client.errors import InferenceServerError
from trtserve.client.shared_memory import Region, SystemSharedMemoryRegion
from trtserve.client.tls import TlsConfig
from trtserve.client.types import InferInput, SharedMemoryInput, SharedMemoryOutput
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol.datatypes import from_name
from trtserve.protocol.tensors import element_count

SharedMemoryKind = Literal["none", "system", "cuda"]
SHARED_MEMORY_KINDS: tuple[SharedMemoryKind, ...] = ("none", "system", "cuda")
# Tensors start at multiples of this many bytes in a region.
ALIGNMENT = 64


@dataclass(frozen=True)
class Layout:
    """Where each tensor lies in a worker's region, and the region's size."""

    inputs: dict[str, int]  # input name -> offset
    outputs: dict[str, tuple[int, int]]  # output name -> (offset, byte size)
    byte_size: int


def plan_layout(
    input_sizes: Sequence[tuple[str, int]], output_sizes: Sequence[tuple[str, int]]
) -> Layout:
    """Inputs, then outputs, each at the next multiple of ALIGNMENT."""
    end = 0

    def place(nbytes: int) -> int:
        nonlocal end
        offset = -(-end // ALIGNMENT) * ALIGNMENT
        end = offset + nbytes
        return offset

    inputs = {name: place(nbytes) for name, nbytes in input_sizes}
    outputs = {name: (place(nbytes), nbytes) for name, nbytes in output_sizes}
    return Layout(inputs, outputs, max(end, 1))


def output_sizes(response: pb.ModelInferResponse) -> list[tuple[str, int]]:
    """The byte size of each output of a response that is not BYTES."""
    sizes = []
    for out in response.outputs:
        dt = from_name(out.datatype)
        if dt.name != "BYTES":
            sizes.append((out.name, element_count(out.shape) * dt.dtype.itemsize))
    return sizes


@dataclass
class WorkerRegions:
    """The regions of a load run and each worker's request that references its own."""

    regions: list[Region]
    messages: list[pb.ModelInferRequest]

    def destroy(self) -> None:
        """Remove the regions here (system objects unlinked, GPU memory freed)."""
        for region in self.regions:
            if isinstance(region, SystemSharedMemoryRegion):
                region.destroy()
            elif isinstance(region, CudaSharedMemoryRegion):
                region.free()


def _create_region(kind: SharedMemoryKind, name: str, byte_size: int) -> Region:
    if kind == "system":
        return SystemSharedMemoryRegion.create(name, f"/{name}", byte_size)
    if kind == "cuda":
        return CudaSharedMemoryRegion.create(name, byte_size)
    raise ValueError(f"shared memory kind must be one of {SHARED_MEMORY_KINDS}, received {kind!r}")


def _worker_message(
    region: Region,
    layout: Layout,
    message: pb.ModelInferRequest,
    inputs: Sequence[InferInput],
    response: pb.ModelInferResponse,
) -> pb.ModelInferRequest:
    references: list[InferInput | SharedMemoryInput] = [
        region.write_input(i.name, i.data, layout.inputs[i.name], i.datatype) for i in inputs
    ]
    outputs: list[str | SharedMemoryOutput] = []
    for out in response.outputs:
        if out.name in layout.outputs:
            offset, nbytes = layout.outputs[out.name]
            outputs.append(region.output_reference(out.name, nbytes, offset))
        else:
            outputs.append(out.name)
    return rq.build_infer_request(
        message.model_name, references, outputs, version=message.model_version
    )


async def _register(client: AsyncInferenceClient, region: Region) -> None:
    if isinstance(region, SystemSharedMemoryRegion):
        await client.register_system_shared_memory(region.name, region.key, region.byte_size)
    elif isinstance(region, CudaSharedMemoryRegion):
        await client.register_cuda_shared_memory(
            region.name, region.raw_handle(), region.device_id, region.byte_size
        )


async def _unregister(client: AsyncInferenceClient, region: Region) -> None:
    if isinstance(region, SystemSharedMemoryRegion):
        await client.unregister_system_shared_memory(region.name)
    elif isinstance(region, CudaSharedMemoryRegion):
        await client.unregister_cuda_shared_memory(region.name)


async def prepare(
    kind: SharedMemoryKind,
    address: str,
    message: pb.ModelInferRequest,
    inputs: Sequence[InferInput],
    workers: int,
    *,
    timeout: float | None = None,
    tls: TlsConfig | None = None,
) -> WorkerRegions:
    """Create, fill and register a region per worker; on any failure, undo what was done.

    `message` is the inline request of `inputs`; it is sent once, and its failure raises
    InferenceServerError.
    """
    created = WorkerRegions([], [])
    registered: list[Region] = []
    prefix = f"trtserve-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    async with AsyncInferenceClient(address, timeout=timeout, tls=tls) as client:
        try:
            response = await client.send_infer_request(message)
            input_sizes = [
                (i.name, rq.tensor_bytes(i.name, i.data, i.datatype)[0].nbytes) for i in inputs
            ]
            layout = plan_layout(input_sizes, output_sizes(response))
            for index in range(workers):
                region = _create_region(kind, f"{prefix}-{index}", layout.byte_size)
                created.regions.append(region)
                created.messages.append(_worker_message(region, layout, message, inputs, response))
                await _register(client, region)
                registered.append(region)
        except BaseException:
            try:
                await _unregister_all(client, registered)
            finally:
                created.destroy()
            raise
    return created


async def _unregister_all(
    client: AsyncInferenceClient, regions: Sequence[Region]
) -> InferenceServerError | None:
    """Unregister each region, on past failures (the server gone); the first failure."""
    failure: InferenceServerError | None = None
    for region in regions:
        try:
            await _unregister(client, region)
        except InferenceServerError as e:
            failure = failure or e
    return failure


async def release(
    regions: WorkerRegions,
    address: str,
    *,
    timeout: float | None = None,
    tls: TlsConfig | None = None,
    strict: bool = True,
) -> None:
    """Unregister the regions with the server, then destroy them here.

    With `strict`, the first failure to unregister is raised, after every region was tried
    and destroyed; without, failures are ignored (the run is failing already).
    """
    try:
        async with AsyncInferenceClient(address, timeout=timeout, tls=tls) as client:
            failure = await _unregister_all(client, regions.regions)
    finally:
        regions.destroy()
    if strict and failure is not None:
        raise failure


@asynccontextmanager
async def worker_messages(
    kind: SharedMemoryKind,
    address: str,
    message: pb.ModelInferRequest,
    inputs: Sequence[InferInput],
    workers: int,
    *,
    timeout: float | None = None,
    tls: TlsConfig | None = None,
) -> AsyncIterator[list[pb.ModelInferRequest]]:
    """The workers' requests: [message] for kind "none", else one per worker, by reference.

    The regions are released when the block ends, however it ends; a failure to unregister
    is raised only when the block itself did not fail.
    """
    if kind == "none":
        yield [message]
        return
    regions = await prepare(kind, address, message, inputs, workers, timeout=timeout, tls=tls)
    try:
        yield regions.messages
    except BaseException:
        await release(regions, address, timeout=timeout, tls=tls, strict=False)
        raise
    await release(regions, address, timeout=timeout, tls=tls)


@contextmanager
def worker_messages_blocking(
    kind: SharedMemoryKind,
    address: str,
    message: pb.ModelInferRequest,
    inputs: Sequence[InferInput],
    workers: int,
    *,
    timeout: float | None = None,
    tls: TlsConfig | None = None,
) -> Iterator[list[pb.ModelInferRequest]]:
    """worker_messages for code outside an event loop (each step in an asyncio.run)."""
    if kind == "none":
        yield [message]
        return
    regions = asyncio.run(
        prepare(kind, address, message, inputs, workers, timeout=timeout, tls=tls)
    )
    try:
        yield regions.messages
    except BaseException:
        asyncio.run(release(regions, address, timeout=timeout, tls=tls, strict=False))
        raise
    asyncio.run(release(regions, address, timeout=timeout, tls=tls))
