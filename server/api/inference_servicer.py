"""The KServe v2 `inference.GRPCInferenceService`, wire-compatible with tritonclient."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.api.codec import (
    OFF_LOOP_ELEMENTS,
    check_request,
    decode_tensors,
    encode_response,
    encode_response_bytes,
    many_objects,
)
from trtserve.server.api.heap_release import HeapRelease
from trtserve.server.api.registration import UndecodableRequest, require_message
from trtserve.server.api.statistics import model_statistics
from trtserve.server.api.status import grpc_errors, outcome, status_code, status_message
from trtserve.server.errors import Internal, InvalidArgument, ServerError, Unavailable
from trtserve.server.limits import RequestLimits, check_upload_size
from trtserve.server.metrics import ServerMetrics
from trtserve.server.models.manager import ModelManager
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.repository.model_config import config_from_settings
from trtserve.server.repository.repository import check_model_name, check_relative_path
from trtserve.server.scheduler.request import InferenceResponse

log = logging.getLogger(__name__)

# A unary reply is pre-serialized bytes, a stream reply a message (see codec).
Reply = TypeVar("Reply", bytes, pb.ModelInferResponse)

SERVER_NAME = "trtserve"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "binary_tensor_data")


class ServingState:
    """Whether the server takes new inference requests, and how many are in flight."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one inference request while it runs."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no inference request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Translates v2 RPCs into model manager calls."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServerMetrics,
        state: ServingState,
        version: str,
        limits: RequestLimits,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._state = state
        self._version = version
        self._limits = limits
        self._heap_release = HeapRelease()

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: object
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: object
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._state.ready and not self._state.draining)

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: object
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=EXTENSIONS
        )

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: object
    ) -> pb.ModelReadyResponse:
        try:
            self._manager.get(_required(request.name, "name"), request.version)
        except ServerError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._state.draining)

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: object
    ) -> pb.ModelMetadataResponse:
        model = self._manager.get(_required(request.name, "name"), request.version)
        batch = [-1] if model.settings.max_batch_size > 0 else []
        reply = pb.ModelMetadataResponse(
            name=model.name, versions=[str(model.version)], platform=model.settings.platform
        )
        for spec in model.inputs.values():
            reply.inputs.add(name=spec.name, datatype=spec.datatype, shape=batch + list(spec.shape))
        for spec in model.outputs.values():
            reply.outputs.add(
                name=spec.name, datatype=spec.datatype, shape=batch + list(spec.shape)
            )
        return reply

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: object
    ) -> pb.ModelConfigResponse:
        model = self._manager.get(_required(request.name, "name"), request.version)
        return pb.ModelConfigResponse(config=config_from_settings(model.settings, model.io))

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: object
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            self._manager.get(request.name, request.version)
        return model_statistics(self._metrics, request.name, request.version)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: object
    ) -> pb.RepositoryIndexResponse:
        reply = pb.RepositoryIndexResponse()
        for entry in await self._manager.index():
            if request.ready and entry.state != "READY":
                continue
            reply.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return reply

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: object
    ) -> pb.RepositoryModelLoadResponse:
        # Every name is checked before anything is written.
        name = check_model_name(_required(request.model_name, "model_name"))
        config_json, files = _load_parameters(request)
        # Files sent with a load are an upload: they count against the same limits.
        slot: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if files:
            check_upload_size(
                f"model '{name}' file overrides",
                sum(len(data) for data in files.values()),
                self._limits.max_upload_bytes,
            )
            slot = self._limits.uploads.slot()
        with slot:
            await self._manager.load(name, config_json=config_json, files=files)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: object
    ) -> pb.RepositoryModelUnloadResponse:
        await self._manager.unload(_required(request.model_name, "model_name"))
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            return await self._infer(request, deadline, encode_response_bytes, context)
        except ServerError as error:
            await context.abort(status_code(error), status_message(error))
            raise  # unreachable: abort raises

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Requests run concurrently; responses go back as they finish, matched by `id`. A
        # request holds a slot from being read until gRPC has taken its reply, and the reader
        # waits for a free slot before it reads on: a client that stops reading replies stops
        # the reader, HTTP/2 flow control then stops the client, and the stream holds at most
        # `max_stream_in_flight` requests and replies beyond what gRPC's windows buffer.
        slots = asyncio.Semaphore(self._limits.max_stream_in_flight)
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
        request_iterator: AsyncIterator[pb.ModelInferRequest],
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
        request: pb.ModelInferRequest | UndecodableRequest,
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
        request: pb.ModelInferRequest,
        deadline: float | None,
        encode: Callable[[pb.ModelInferRequest, ServingModel, InferenceResponse], Reply],
        context: grpc.aio.ServicerContext[Any, Any] | None = None,
    ) -> Reply:
        with self._state.track():
            return await self._infer_tracked(request, deadline, encode, context)

    async def _infer_tracked(
        self,
        request: pb.ModelInferRequest,
        deadline: float | None,
        encode: Callable[[pb.ModelInferRequest, ServingModel, InferenceResponse], Reply],
        context: grpc.aio.ServicerContext[Any, Any] | None,
    ) -> Reply:
        started = time.perf_counter_ns()
        request = require_message(request)
        if self._state.draining:
            raise Unavailable("server is shutting down; retry on another replica")
        # Metrics are labelled only with models and versions that exist, so clients cannot
        # grow them (or ModelStatistics) by naming made-up ones.
        model = self._manager.get(
            _required(request.model_name, "model_name"), request.model_version
        )
        queue_ns: int | None = None
        batch_size = 1
        # Stays "cancelled" when the client goes away and the task is cancelled mid-request.
        result = "cancelled"
        # Whether decoding or encoding built objects per element (see HeapRelease).
        many = False
        try:
            checked = check_request(request, model, deadline, self._limits)
            # Small raw requests decode inline (zero-copy, microseconds); a large BYTES or
            # typed request would hold the loop for seconds, so a worker thread decodes it.
            if checked.per_element > OFF_LOOP_ELEMENTS:
                many = True
                inputs = await asyncio.to_thread(decode_tensors, checked)
            else:
                inputs = decode_tensors(checked)
            batch_size = inputs.batch_size
            response = await model.scheduler.submit(inputs)
            queue_ns = response.queue_ns
            if many_objects(response):
                many = True
                reply = await asyncio.to_thread(encode, request, model, response)
            else:
                reply = encode(request, model, response)
            result = "success"
            return reply
        except ServerError as e:
            result = outcome(e)
            raise
        except Exception as e:
            result = outcome(e)
            log.exception("model %s: unexpected inference failure", model.name)
            raise Internal(status_message(e)) from e
        finally:
            model.metrics.record_request(
                result, time.perf_counter_ns() - started, queue_ns, batch_size
            )
            if many:
                self._release_after(context)

    def _release_after(self, context: grpc.aio.ServicerContext[Any, Any] | None) -> None:
        """Release freed memory once the call is over (gRPC frees the messages only then)."""
        if context is None:
            self._heap_release.after_request()
        else:
            # grpc-stubs types the callback as a class, where grpc takes any callable.
            context.add_done_callback(self._call_done)  # type: ignore[arg-type]

    def _call_done(self, context: object) -> None:
        self._heap_release.after_request()


def _stream_error(
    request: pb.ModelInferRequest | UndecodableRequest, error: Exception
) -> pb.ModelStreamInferResponse:
    """The error response of a stream request: what is known of the request, and why."""
    if isinstance(request, UndecodableRequest):
        # Nothing of the message is known: the response's id and model stay empty.
        return pb.ModelStreamInferResponse(error_message=status_message(error))
    message = status_message(error)
    if not isinstance(error, ServerError):
        log.exception("stream request id '%s': unexpected failure", request.id)
        message = f"request id '{request.id}': {message}"
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field}: expected a model name, received an empty string")
    return value


def _load_parameters(
    request: pb.RepositoryModelLoadRequest,
) -> tuple[str | None, dict[str, bytes]]:
    """Split the `config` JSON and `file:<version>/<name>` overrides of a load request."""
    config_json: str | None = None
    files: dict[str, bytes] = {}
    for key, param in request.parameters.items():
        kind = param.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise InvalidArgument(f"parameter 'config': expected string_param, received {kind}")
            config_json = param.string_param
        elif key.startswith("file:"):
            if kind != "bytes_param":
                raise InvalidArgument(f"parameter '{key}': expected bytes_param, received {kind}")
            relative_path = key.removeprefix("file:")
            check_relative_path(relative_path)
            files[relative_path] = param.bytes_param
        else:
            raise InvalidArgument(
                f"unknown load parameter '{key}'; expected 'config' or 'file:<version>/<name>'"
            )
    if files and config_json is None:
        raise InvalidArgument(
            "parameter 'config': required when file overrides are sent (as tritonclient does)"
        )
    return config_json, files
