"""The KServe v2 `inference.GRPCInferenceService`, wire-compatible with tritonclient."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.api.infer_wire import InferMessage
from trtserve.server.api.registration import UndecodableRequest, require_message
from trtserve.server.dataplane.dataplane import DataPlane, WhenDone
from trtserve.server.dataplane.shared_memory import RegionKind
from trtserve.server.errors import client_message
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.repository.repository import check_model_name
from trtserve.server.scheduler.request import InferenceResponse
from trtserve.server.v2 import messages
from trtserve.server.v2.codec import (
    CheckedRequest,
    check_request,
    encode_response,
    encode_response_bytes,
)

# Trailing metadata of ServerMetadata under `serve --workers N`: the answering worker's index.
WORKER_METADATA = "trtserve-worker"

log = logging.getLogger(__name__)

# A unary reply is pre-serialized bytes, a stream reply a message (see codec).
Reply = TypeVar("Reply", bytes, pb.ModelInferResponse)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 RPCs as data plane calls: parse the message, call, encode the reply."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: object
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: object
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        worker = self._plane.info().worker
        if worker is not None:
            # Which worker a connection reached, for operators and tests of `--workers`.
            context.set_trailing_metadata(((WORKER_METADATA, str(worker)),))
        return messages.server_metadata(self._plane)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: object
    ) -> pb.ModelReadyResponse:
        name = messages.required_name(request.name, "name")
        return pb.ModelReadyResponse(ready=self._plane.model_ready(name, request.version))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: object
    ) -> pb.ModelMetadataResponse:
        return messages.model_metadata(self._plane, request.name, request.version)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: object
    ) -> pb.ModelConfigResponse:
        return messages.model_config(self._plane, request.name, request.version)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: object
    ) -> pb.ModelStatisticsResponse:
        return messages.statistics(self._plane, request.name, request.version)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: object
    ) -> pb.RepositoryIndexResponse:
        return await messages.repository_index(self._plane, request.ready)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: object
    ) -> pb.RepositoryModelLoadResponse:
        # Every name is checked before anything is written.
        name = check_model_name(messages.required_name(request.model_name, "model_name"))
        config_json, files = messages.load_parameters(request)
        await self._plane.load(name, config_json, files)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: object
    ) -> pb.RepositoryModelUnloadResponse:
        await self._plane.unload(messages.required_name(request.model_name, "model_name"))
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: object
    ) -> pb.SystemSharedMemoryStatusResponse:
        return messages.system_regions(self._plane, request.name)

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: object
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await self._plane.register_system_region(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: object
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self._plane.unregister_region(RegionKind.SYSTEM, request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: object
    ) -> pb.CudaSharedMemoryStatusResponse:
        return messages.cuda_regions(self._plane, request.name)

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: object
    ) -> pb.CudaSharedMemoryRegisterResponse:
        await self._plane.register_cuda_region(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: object
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        await self._plane.unregister_region(RegionKind.CUDA, request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    async def ModelInfer(
        self, request: InferMessage, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        return await self._infer(request, deadline, encode_response_bytes, context)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[InferMessage | UndecodableRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Requests run concurrently; responses go back as they finish, matched by `id`. A
        # request holds a slot from being read until gRPC has taken its reply, and the reader
        # waits for a free slot before it reads on: a client that stops reading replies stops
        # the reader, HTTP/2 flow control then stops the client, and the stream holds at most
        # `max_stream_in_flight` requests and replies beyond what gRPC's windows buffer.
        slots = asyncio.Semaphore(self._plane.limits.max_stream_in_flight)
        # Never longer than the slots (plus the end marker), so it needs no bound of its own.
        replies: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_stream(request_iterator, replies, slots))
        try:
            while (reply := await replies.get()) is not None:
                yield reply
                slots.release()
            await reader  # a failure to read the stream ends it with that error
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.wait([reader])

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[InferMessage | UndecodableRequest],
        replies: asyncio.Queue[pb.ModelStreamInferResponse | None],
        slots: asyncio.Semaphore,
    ) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                try:
                    request = await anext(request_iterator)
                except StopAsyncIteration:
                    break
                task = asyncio.create_task(self._stream_one(request, replies))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
        finally:
            # Cancelled (the client went away): no request outlives its stream.
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            replies.put_nowait(None)

    async def _stream_one(
        self,
        request: InferMessage | UndecodableRequest,
        replies: asyncio.Queue[pb.ModelStreamInferResponse | None],
    ) -> None:
        """Answer one request of a stream; every failure becomes its error response."""
        try:
            response = await self._infer(require_message(request), None, encode_response)
        except Exception as error:
            replies.put_nowait(_stream_error(request, error))
            return
        replies.put_nowait(pb.ModelStreamInferResponse(infer_response=response))

    async def _infer(
        self,
        parsed: InferMessage,
        deadline: float | None,
        encode: Callable[[pb.ModelInferRequest, ServingModel, InferenceResponse], Reply],
        context: grpc.aio.ServicerContext[Any, Any] | None = None,
    ) -> Reply:
        limits = self._plane.limits
        request = parsed.message

        def prepare(model: ServingModel) -> CheckedRequest:
            return check_request(request, model, deadline, limits, parsed.raw)

        def encode_reply(model: ServingModel, response: InferenceResponse) -> Reply:
            return encode(request, model, response)

        return await self._plane.infer(
            messages.required_name(request.model_name, "model_name"),
            request.model_version,
            prepare,
            encode_reply,
            None if context is None else _when_done(context),
        )


def _when_done(context: grpc.aio.ServicerContext[Any, Any]) -> WhenDone:
    """Run a function once the call is over (gRPC frees its messages only then)."""

    def register(run: Callable[[], None]) -> None:
        # grpc-stubs types the callback as a class, where grpc takes any callable.
        context.add_done_callback(lambda _context: run())  # type: ignore[arg-type]

    return register


def _stream_error(
    parsed: InferMessage | UndecodableRequest, error: Exception
) -> pb.ModelStreamInferResponse:
    """The error response of a stream request: what is known of the request, and why."""
    if isinstance(parsed, UndecodableRequest):
        # Nothing of the message is known: the response's id and model stay empty.
        return pb.ModelStreamInferResponse(error_message=client_message(error, "ModelStreamInfer"))
    request = parsed.message
    return pb.ModelStreamInferResponse(
        error_message=client_message(error, f"ModelStreamInfer request id '{request.id}'"),
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )
