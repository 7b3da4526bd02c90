"""An asyncio client for the v2 inference protocol and trtserve's model upload (grpc.aio)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc
import grpc.aio

from trtserve.client import calls
from trtserve.client import request as rq
from trtserve.client.calls import Call
from trtserve.client.core import ChannelSettings, ClientCore
from trtserve.client.credentials import AsyncBearerToken
from trtserve.client.endpoints import AsyncRoutedStub
from trtserve.client.errors import InferenceServerError
from trtserve.client.types import (
    CudaRegionStatus,
    InferInput,
    InferRequest,
    InferResult,
    ModelIndexEntry,
    ModelMetadata,
    ModelStatistics,
    ServerMetadata,
    SharedMemoryInput,
    SharedMemoryOutput,
    SystemRegionStatus,
    UploadResult,
)
from trtserve.protocol import grpc_service_pb2 as pb

_T = TypeVar("_T")


class AsyncInferenceClient(ClientCore[grpc.aio.Channel]):
    """asyncio client with the methods of InferenceClient, as coroutines.

    Create it inside a running event loop; every failed call raises InferenceServerError.
    Its arguments are InferenceClient's.
    """

    _routed_stub = AsyncRoutedStub

    def _open_channel(self, address: str, settings: ChannelSettings) -> grpc.aio.Channel:
        options, credentials, token = settings.options, settings.credentials, settings.token
        interceptors: Any = None if token is None else [AsyncBearerToken(token)]
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        return grpc.aio.secure_channel(address, credentials, options, interceptors=interceptors)

    async def _call(
        self, method: Callable[..., Awaitable[_T]], request: object, timeout: float | None = None
    ) -> _T:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise InferenceServerError.from_rpc_error(e) from None

    async def _send(self, call: Call[_T], timeout: float | None = None) -> _T:
        return call.parse(await self._call(self._method(call), call.request, timeout))

    async def server_live(self) -> bool:
        """Whether the server process answers and is live."""
        return await self._send(calls.server_live())

    async def server_ready(self) -> bool:
        """Whether the server is ready to serve inference."""
        return await self._send(calls.server_ready())

    async def server_metadata(self) -> ServerMetadata:
        """The server's name, version and protocol extensions."""
        return await self._send(calls.server_metadata())

    async def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version; "" for the server's choice) is ready."""
        return await self._send(calls.model_ready(name, version))

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The model's platform, versions and tensors."""
        return await self._send(calls.model_metadata(name, version))

    async def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model configuration as a dict with the config file's field names."""
        return await self._send(calls.model_config(name, version))

    async def model_statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Statistics of one model version, or of every model when `name` is ""."""
        return await self._send(calls.model_statistics(name, version))

    async def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Every model in the repository with its state."""
        return await self._send(calls.repository_index(ready_only))

    async def load_model(
        self, name: str, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; `config` is JSON, `files` maps "1/model.onnx" to bytes."""
        await self._send(calls.load_model(name, config, files))

    async def unload_model(self, name: str) -> None:
        """Unload a model."""
        await self._send(calls.unload_model(name))

    async def infer(
        self,
        model: str,
        inputs: Sequence[InferInput | SharedMemoryInput],
        outputs: Sequence[str | SharedMemoryOutput] | None = None,
        version: str = "",
        request_id: str = "",
        timeout: float | None = None,
        *,
        use_typed_contents: bool = False,
    ) -> InferResult:
        """Run one inference; `outputs=None` returns every output.

        Inputs given as SharedMemoryInput are read by the server from their region; outputs
        given as SharedMemoryOutput are written into theirs and described in the result's
        `shared_memory_outputs`.
        """
        call = calls.infer(model, inputs, outputs, version, request_id, use_typed_contents)
        return await self._send(call, timeout)

    async def register_system_shared_memory(
        self, name: str, key: str, byte_size: int, offset: int = 0
    ) -> None:
        """Register `byte_size` bytes at `offset` of a POSIX shared-memory object as `name`.

        `key` names the object as shm_open does ("/name": /dev/shm/name).
        """
        await self._send(
            self._one_server(calls.register_system_shared_memory(name, key, byte_size, offset))
        )

    async def unregister_system_shared_memory(self, name: str = "") -> None:
        """Unregister system shared-memory region `name`; every one when `name` is ""."""
        await self._send(self._one_server(calls.unregister_system_shared_memory(name)))

    async def system_shared_memory_status(self, name: str = "") -> list[SystemRegionStatus]:
        """The registered system shared-memory regions (only `name` when given), by name."""
        return await self._send(self._one_server(calls.system_shared_memory_status(name)))

    async def register_cuda_shared_memory(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Register a GPU allocation on `device_id` as region `name` (its first `byte_size` bytes).

        `raw_handle` is the allocation's 64-byte cudaIpcMemHandle_t.
        """
        call = calls.register_cuda_shared_memory(name, raw_handle, device_id, byte_size)
        await self._send(self._one_server(call))

    async def unregister_cuda_shared_memory(self, name: str = "") -> None:
        """Unregister CUDA shared-memory region `name`; every one when `name` is ""."""
        await self._send(self._one_server(calls.unregister_cuda_shared_memory(name)))

    async def cuda_shared_memory_status(self, name: str = "") -> list[CudaRegionStatus]:
        """The registered CUDA shared-memory regions (only `name` when given), by name."""
        return await self._send(self._one_server(calls.cuda_shared_memory_status(name)))

    async def send_infer_request(
        self, request: pb.ModelInferRequest, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        """Send a prebuilt ModelInferRequest (reusable, e.g. by a load generator)."""
        return await self._call(self._stub.ModelInfer, request, timeout)

    @overload
    def stream_infer(
        self,
        requests: Iterable[InferRequest] | AsyncIterable[InferRequest],
        *,
        raise_errors: Literal[True] = ...,
    ) -> AsyncIterator[InferResult]: ...

    @overload
    def stream_infer(
        self,
        requests: Iterable[InferRequest] | AsyncIterable[InferRequest],
        *,
        raise_errors: Literal[False],
    ) -> AsyncIterator[InferResult | InferenceServerError]: ...

    def stream_infer(
        self,
        requests: Iterable[InferRequest] | AsyncIterable[InferRequest],
        *,
        raise_errors: bool = True,
    ) -> AsyncIterator[InferResult] | AsyncIterator[InferResult | InferenceServerError]:
        """Send requests over one ModelStreamInfer stream; yield a result per response.

        A response's error_message raises InferenceServerError (ending the stream), or with
        `raise_errors=False` is yielded as one and the stream goes on.
        """
        return self._stream(_messages(requests), raise_errors)

    async def _stream(
        self, messages: AsyncIterator[pb.ModelInferRequest], raise_errors: bool
    ) -> AsyncIterator[InferResult | InferenceServerError]:
        call = self._stub.ModelStreamInfer(messages, timeout=self.timeout)
        try:
            async for response in call:
                yield calls.stream_result(response, raise_errors)
        except grpc.RpcError as e:
            raise InferenceServerError.from_rpc_error(e) from None
        finally:
            call.cancel()

    async def upload_model(
        self,
        name: str,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        version: int = 0,
        filename: str = "model.plan",
        config_json: str = "",
        chunk_bytes: int = 1 << 20,
        progress: rq.ProgressFn | None = None,
    ) -> UploadResult:
        """Stream a model file to the server, which stores and loads it.

        `version=0` lets the server pick one above the newest; `progress(sent, total)` is
        called after each chunk.
        """
        # Hashing a large file would stall the event loop.
        source = await asyncio.to_thread(rq.UploadSource.open, path_or_bytes)
        call = calls.upload_model(
            name,
            source,
            version=version,
            filename=filename,
            config_json=config_json,
            chunk_bytes=chunk_bytes,
            progress=progress,
        )
        return await self._send(call)

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            await channel.close(grace=None)

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _messages(
    requests: Iterable[InferRequest] | AsyncIterable[InferRequest],
) -> AsyncIterator[pb.ModelInferRequest]:
    """Build request messages lazily from a sync or async iterable."""
    if isinstance(requests, AsyncIterable):
        async for r in requests:
            yield rq.build_request_message(r)
    else:
        for r in requests:
            yield rq.build_request_message(r)
