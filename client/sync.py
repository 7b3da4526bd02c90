"""A blocking client for the v2 inference protocol and trtserve's model upload."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc

from trtserve.client import calls
from trtserve.client import request as rq
from trtserve.client.calls import Call
from trtserve.client.core import ChannelSettings, ClientCore
from trtserve.client.credentials import BearerToken
from trtserve.client.endpoints import RoutedStub
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


class InferenceClient(ClientCore[grpc.Channel]):
    """Blocking client; every failed call raises InferenceServerError.

    Its arguments are ClientCore's: address(es), timeout, max_message_bytes, retry, token, tls.
    """

    _routed_stub = RoutedStub

    def _open_channel(self, address: str, settings: ChannelSettings) -> grpc.Channel:
        options, credentials, token = settings.options, settings.credentials, settings.token
        if credentials is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            channel = grpc.secure_channel(address, credentials, options)
        return channel if token is None else grpc.intercept_channel(channel, BearerToken(token))

    def _call(self, method: Callable[..., _T], request: object, timeout: float | None = None) -> _T:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise InferenceServerError.from_rpc_error(e) from None

    def _send(self, call: Call[_T], timeout: float | None = None) -> _T:
        return call.parse(self._call(self._method(call), call.request, timeout))

    def server_live(self) -> bool:
        """Whether the server process answers and is live."""
        return self._send(calls.server_live())

    def server_ready(self) -> bool:
        """Whether the server is ready to serve inference."""
        return self._send(calls.server_ready())

    def server_metadata(self) -> ServerMetadata:
        """The server's name, version and protocol extensions."""
        return self._send(calls.server_metadata())

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version; "" for the server's choice) is ready."""
        return self._send(calls.model_ready(name, version))

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The model's platform, versions and tensors."""
        return self._send(calls.model_metadata(name, version))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model configuration as a dict with the config file's field names."""
        return self._send(calls.model_config(name, version))

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Statistics of one model version, or of every model when `name` is ""."""
        return self._send(calls.model_statistics(name, version))

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Every model in the repository with its state."""
        return self._send(calls.repository_index(ready_only))

    def load_model(
        self, name: str, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; `config` is JSON, `files` maps "1/model.onnx" to bytes."""
        self._send(calls.load_model(name, config, files))

    def unload_model(self, name: str) -> None:
        """Unload a model."""
        self._send(calls.unload_model(name))

    def infer(
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
        return self._send(call, timeout)

    def register_system_shared_memory(
        self, name: str, key: str, byte_size: int, offset: int = 0
    ) -> None:
        """Register `byte_size` bytes at `offset` of a POSIX shared-memory object as `name`.

        `key` names the object as shm_open does ("/name": /dev/shm/name).
        """
        self._send(
            self._one_server(calls.register_system_shared_memory(name, key, byte_size, offset))
        )

    def unregister_system_shared_memory(self, name: str = "") -> None:
        """Unregister system shared-memory region `name`; every one when `name` is ""."""
        self._send(self._one_server(calls.unregister_system_shared_memory(name)))

    def system_shared_memory_status(self, name: str = "") -> list[SystemRegionStatus]:
        """The registered system shared-memory regions (only `name` when given), by name."""
        return self._send(self._one_server(calls.system_shared_memory_status(name)))

    def register_cuda_shared_memory(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Register a GPU allocation on `device_id` as region `name` (its first `byte_size` bytes).

        `raw_handle` is the allocation's 64-byte cudaIpcMemHandle_t.
        """
        call = calls.register_cuda_shared_memory(name, raw_handle, device_id, byte_size)
        self._send(self._one_server(call))

    def unregister_cuda_shared_memory(self, name: str = "") -> None:
        """Unregister CUDA shared-memory region `name`; every one when `name` is ""."""
        self._send(self._one_server(calls.unregister_cuda_shared_memory(name)))

    def cuda_shared_memory_status(self, name: str = "") -> list[CudaRegionStatus]:
        """The registered CUDA shared-memory regions (only `name` when given), by name."""
        return self._send(self._one_server(calls.cuda_shared_memory_status(name)))

    def send_infer_request(
        self, request: pb.ModelInferRequest, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        """Send a prebuilt ModelInferRequest (reusable, e.g. by a load generator)."""
        response: pb.ModelInferResponse = self._call(self._stub.ModelInfer, request, timeout)
        return response

    @overload
    def stream_infer(
        self, requests: Iterable[InferRequest], *, raise_errors: Literal[True] = ...
    ) -> Iterator[InferResult]: ...

    @overload
    def stream_infer(
        self, requests: Iterable[InferRequest], *, raise_errors: Literal[False]
    ) -> Iterator[InferResult | InferenceServerError]: ...

    def stream_infer(
        self, requests: Iterable[InferRequest], *, raise_errors: bool = True
    ) -> Iterator[InferResult] | Iterator[InferResult | InferenceServerError]:
        """Send requests over one ModelStreamInfer stream; yield a result per response.

        A response's error_message raises InferenceServerError (ending the stream), or with
        `raise_errors=False` is yielded as one and the stream goes on.
        """
        messages = (rq.build_request_message(r) for r in requests)
        return self._stream(messages, raise_errors)

    def _stream(
        self, messages: Iterator[pb.ModelInferRequest], raise_errors: bool
    ) -> Iterator[InferResult | InferenceServerError]:
        call = self._stub.ModelStreamInfer(messages, timeout=self.timeout)
        try:
            for response in call:
                yield calls.stream_result(response, raise_errors)
        except grpc.RpcError as e:
            raise InferenceServerError.from_rpc_error(e) from None
        finally:
            call.cancel()

    def upload_model(
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
        source = rq.UploadSource.open(path_or_bytes)
        call = calls.upload_model(
            name,
            source,
            version=version,
            filename=filename,
            config_json=config_json,
            chunk_bytes=chunk_bytes,
            progress=progress,
        )
        return self._send(call)

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
