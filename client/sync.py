"""A blocking client for the v2 inference protocol and trtserve's model upload."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc

from trtserve.client import request as rq
from trtserve.client.credentials import TOKEN_ENV, BearerToken
from trtserve.client.endpoints import (
    DEFAULT_RETRY,
    EndpointRing,
    RetryPolicy,
    RoutedStub,
    addresses_of,
    endpoint_options,
)
from trtserve.client.errors import InferenceServerError
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

DEFAULT_ADDRESS = "127.0.0.1:8001"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

_T = TypeVar("_T")


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Channel options shared by the sync and asyncio clients."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class InferenceClient:
    """Blocking client; every failed call raises InferenceServerError.

    `timeout` (seconds) is the default deadline of every call; None waits forever. `address`
    may be a list of replicas: calls go to them in turn, and calls safe to repeat move on to
    the next one when a replica answers UNAVAILABLE (see `trtserve.client.endpoints`).
    `token` (default: $TRTSERVE_TOKEN) is sent as a bearer token with every call. `tls`
    connects over TLS (see TlsConfig); without it the connection is plaintext.
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
        if tls is None:
            channels = [grpc.insecure_channel(a, options=options) for a in self.addresses]
        else:
            credentials, secure = tls.credentials(), options + tls.options()
            channels = [grpc.secure_channel(a, credentials, secure) for a in self.addresses]
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if token:
            channels = [grpc.intercept_channel(c, BearerToken(token)) for c in channels]
        self._channels = channels
        ring = EndpointRing(len(self._channels), retry.cooldown_s)
        # The generated stubs are untyped; each call's result type is stated where it is used.
        self._stub = RoutedStub(
            [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels],  # type: ignore[no-untyped-call]
            ring,
        )
        self._upload_stub = RoutedStub(
            [tpb_grpc.ModelUploadStub(c) for c in self._channels],  # type: ignore[no-untyped-call]
            ring,
        )

    def _call(self, method: Callable[..., _T], request: object, timeout: float | None = None) -> _T:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise InferenceServerError.from_rpc_error(e) from None

    def server_live(self) -> bool:
        """Whether the server process answers and is live."""
        return bool(self._call(self._stub.ServerLive, pb.ServerLiveRequest()).live)

    def server_ready(self) -> bool:
        """Whether the server is ready to serve inference."""
        return bool(self._call(self._stub.ServerReady, pb.ServerReadyRequest()).ready)

    def server_metadata(self) -> ServerMetadata:
        """The server's name, version and protocol extensions."""
        response = self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest())
        return rq.parse_server_metadata(response)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version; "" for the server's choice) is ready."""
        request = pb.ModelReadyRequest(name=name, version=version)
        return bool(self._call(self._stub.ModelReady, request).ready)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The model's platform, versions and tensors."""
        request = pb.ModelMetadataRequest(name=name, version=version)
        return rq.parse_model_metadata(self._call(self._stub.ModelMetadata, request))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model configuration as a dict with the config file's field names."""
        request = pb.ModelConfigRequest(name=name, version=version)
        return rq.config_to_dict(self._call(self._stub.ModelConfig, request))

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Statistics of one model version, or of every model when `name` is ""."""
        request = pb.ModelStatisticsRequest(name=name, version=version)
        return rq.parse_statistics(self._call(self._stub.ModelStatistics, request))

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Every model in the repository with its state."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return rq.parse_repository_index(self._call(self._stub.RepositoryIndex, request))

    def load_model(
        self, name: str, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; `config` is JSON, `files` maps "1/model.onnx" to bytes."""
        self._call(self._stub.RepositoryModelLoad, rq.build_load_request(name, config, files))

    def unload_model(self, name: str) -> None:
        """Unload a model."""
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        self._call(self._stub.RepositoryModelUnload, request)

    def infer(
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
        return rq.parse_infer_response(self.send_infer_request(request, timeout))

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
        messages = rq.upload_requests(
            name,
            source,
            version=version,
            filename=filename,
            config_json=config_json,
            chunk_bytes=chunk_bytes,
            progress=progress,
        )
        return rq.parse_upload_response(self._call(self._upload_stub.UploadModel, messages))

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
