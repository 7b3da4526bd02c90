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

from trtserve.client import request as rq
from trtserve.client.credentials import TOKEN_ENV, AsyncBearerToken
from trtserve.client.endpoints import (
    DEFAULT_RETRY,
    AsyncRoutedStub,
    EndpointRing,
    RetryPolicy,
    addresses_of,
    endpoint_options,
)
from trtserve.client.errors import InferenceServerError
from trtserve.client.sync import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES, channel_options
from trtserve.client.tls import TlsConfig
from trtserve.client.types import (
    InferInput,
    InferRequest,
    InferResult,
    ModelIndexEntry,
    ModelMetadata,
    ModelStatistics,
    ServerMetadata,
    UploadResult,
)
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc

_T = TypeVar("_T")


class AsyncInferenceClient:
    """asyncio client with the methods of InferenceClient, as coroutines.

    Create it inside a running event loop; every failed call raises InferenceServerError.
    `address` may be a list of replicas, as for InferenceClient.
    """

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryPolicy = DEFAULT_RETRY,
        token: str | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.addresses = addresses_of(address)
        self.address = ",".join(self.addresses)
        self.timeout = timeout
        options = channel_options(max_message_bytes) + endpoint_options(retry)
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        interceptors: Any = [AsyncBearerToken(token)] if token else None
        if tls is None:
            self._channels = [
                grpc.aio.insecure_channel(a, options=options, interceptors=interceptors)
                for a in self.addresses
            ]
        else:
            credentials, secure = tls.credentials(), options + tls.options()
            self._channels = [
                grpc.aio.secure_channel(a, credentials, secure, interceptors=interceptors)
                for a in self.addresses
            ]
        ring = EndpointRing(len(self._channels), retry.cooldown_s)
        # The generated stubs are untyped; each call's result type is stated where it is used.
        self._stub = AsyncRoutedStub(
            [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels],  # type: ignore[no-untyped-call]
            ring,
        )
        self._upload_stub = AsyncRoutedStub(
            [tpb_grpc.ModelUploadStub(c) for c in self._channels],  # type: ignore[no-untyped-call]
            ring,
        )

    async def _call(
        self, method: Callable[..., Awaitable[_T]], request: object, timeout: float | None = None
    ) -> _T:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise InferenceServerError.from_rpc_error(e) from None

    async def server_live(self) -> bool:
        """Whether the server process answers and is live."""
        return bool((await self._call(self._stub.ServerLive, pb.ServerLiveRequest())).live)

    async def server_ready(self) -> bool:
        """Whether the server is ready to serve inference."""
        return bool((await self._call(self._stub.ServerReady, pb.ServerReadyRequest())).ready)

    async def server_metadata(self) -> ServerMetadata:
        """The server's name, version and protocol extensions."""
        response = await self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest())
        return rq.parse_server_metadata(response)

    async def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version; "" for the server's choice) is ready."""
        request = pb.ModelReadyRequest(name=name, version=version)
        return bool((await self._call(self._stub.ModelReady, request)).ready)

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The model's platform, versions and tensors."""
        request = pb.ModelMetadataRequest(name=name, version=version)
        return rq.parse_model_metadata(await self._call(self._stub.ModelMetadata, request))

    async def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model configuration as a dict with the config file's field names."""
        request = pb.ModelConfigRequest(name=name, version=version)
        return rq.config_to_dict(await self._call(self._stub.ModelConfig, request))

    async def model_statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Statistics of one model version, or of every model when `name` is ""."""
        request = pb.ModelStatisticsRequest(name=name, version=version)
        return rq.parse_statistics(await self._call(self._stub.ModelStatistics, request))

    async def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Every model in the repository with its state."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return rq.parse_repository_index(await self._call(self._stub.RepositoryIndex, request))

    async def load_model(
        self, name: str, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; `config` is JSON, `files` maps "1/model.onnx" to bytes."""
        request = rq.build_load_request(name, config, files)
        await self._call(self._stub.RepositoryModelLoad, request)

    async def unload_model(self, name: str) -> None:
        """Unload a model."""
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        await self._call(self._stub.RepositoryModelUnload, request)

    async def infer(
        self,
        model: str,
        inputs: Sequence[InferInput],
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
        timeout: float | None = None,
        *,
        use_typed_contents: bool = False,
    ) -> InferResult:
        """Run one inference; `outputs=None` returns every output."""
        request = rq.build_infer_request(
            model,
            inputs,
            outputs,
            version=version,
            request_id=request_id,
            use_typed_contents=use_typed_contents,
        )
        return rq.parse_infer_response(await self.send_infer_request(request, timeout))

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
                if response.error_message:
                    error = InferenceServerError(grpc.StatusCode.UNKNOWN, response.error_message)
                    if raise_errors:
                        raise error
                    yield error
                else:
                    yield rq.parse_infer_response(response.infer_response)
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
        messages = rq.upload_requests(
            name,
            source,
            version=version,
            filename=filename,
            config_json=config_json,
            chunk_bytes=chunk_bytes,
            progress=progress,
        )
        response = await self._call(self._upload_stub.UploadModel, messages)
        return rq.parse_upload_response(response)

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
