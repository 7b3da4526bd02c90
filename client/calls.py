"""The client's calls as data: which stub method, the request, and how the answer is read.

Built here once for both clients, as httpx builds a request once for Client and AsyncClient;
InferenceClient and AsyncInferenceClient only send them, blocking or awaited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import grpc

from trtserve.client import request as rq
from trtserve.client.errors import InferenceServerError
from trtserve.client.types import (
    CudaRegionStatus,
    InferInput,
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


@dataclass(frozen=True, slots=True)
class Call(Generic[_T]):
    """A unary call ready to send: `method` of the inference (or, `upload`, the upload) stub."""

    method: str
    request: Any
    parse: Callable[[Any], _T]
    upload: bool = False


def _live(response: pb.ServerLiveResponse) -> bool:
    return bool(response.live)


def _ready(response: pb.ServerReadyResponse | pb.ModelReadyResponse) -> bool:
    return bool(response.ready)


def _nothing(response: object) -> None:
    return None


def server_live() -> Call[bool]:
    return Call("ServerLive", pb.ServerLiveRequest(), _live)


def server_ready() -> Call[bool]:
    return Call("ServerReady", pb.ServerReadyRequest(), _ready)


def server_metadata() -> Call[ServerMetadata]:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), rq.parse_server_metadata)


def model_ready(name: str, version: str) -> Call[bool]:
    return Call("ModelReady", pb.ModelReadyRequest(name=name, version=version), _ready)


def model_metadata(name: str, version: str) -> Call[ModelMetadata]:
    request = pb.ModelMetadataRequest(name=name, version=version)
    return Call("ModelMetadata", request, rq.parse_model_metadata)


def model_config(name: str, version: str) -> Call[dict[str, Any]]:
    request = pb.ModelConfigRequest(name=name, version=version)
    return Call("ModelConfig", request, rq.config_to_dict)


def model_statistics(name: str, version: str) -> Call[list[ModelStatistics]]:
    request = pb.ModelStatisticsRequest(name=name, version=version)
    return Call("ModelStatistics", request, rq.parse_statistics)


def repository_index(ready_only: bool) -> Call[list[ModelIndexEntry]]:
    request = pb.RepositoryIndexRequest(ready=ready_only)
    return Call("RepositoryIndex", request, rq.parse_repository_index)


def load_model(name: str, config: str | None, files: Mapping[str, bytes] | None) -> Call[None]:
    request = rq.build_load_request(name, config, files)
    return Call("RepositoryModelLoad", request, _nothing)


def unload_model(name: str) -> Call[None]:
    request = pb.RepositoryModelUnloadRequest(model_name=name)
    return Call("RepositoryModelUnload", request, _nothing)


def infer(
    model: str,
    inputs: Sequence[InferInput | SharedMemoryInput],
    outputs: Sequence[str | SharedMemoryOutput] | None,
    version: str,
    request_id: str,
    use_typed_contents: bool,
) -> Call[InferResult]:
    request = rq.build_infer_request(
        model,
        inputs,
        outputs,
        version=version,
        request_id=request_id,
        use_typed_contents=use_typed_contents,
    )
    placed = rq.shared_memory_output_names(outputs)
    if not placed:
        return Call("ModelInfer", request, rq.parse_infer_response)
    return Call("ModelInfer", request, partial(rq.parse_infer_response, in_shared_memory=placed))


def register_system_shared_memory(name: str, key: str, byte_size: int, offset: int) -> Call[None]:
    request = pb.SystemSharedMemoryRegisterRequest(
        name=name, key=key, offset=offset, byte_size=byte_size
    )
    return Call("SystemSharedMemoryRegister", request, _nothing)


def unregister_system_shared_memory(name: str) -> Call[None]:
    request = pb.SystemSharedMemoryUnregisterRequest(name=name)
    return Call("SystemSharedMemoryUnregister", request, _nothing)


def system_shared_memory_status(name: str) -> Call[list[SystemRegionStatus]]:
    request = pb.SystemSharedMemoryStatusRequest(name=name)
    return Call("SystemSharedMemoryStatus", request, rq.parse_system_status)


def register_cuda_shared_memory(
    name: str, raw_handle: bytes, device_id: int, byte_size: int
) -> Call[None]:
    request = pb.CudaSharedMemoryRegisterRequest(
        name=name, raw_handle=raw_handle, device_id=device_id, byte_size=byte_size
    )
    return Call("CudaSharedMemoryRegister", request, _nothing)


def unregister_cuda_shared_memory(name: str) -> Call[None]:
    request = pb.CudaSharedMemoryUnregisterRequest(name=name)
    return Call("CudaSharedMemoryUnregister", request, _nothing)


def cuda_shared_memory_status(name: str) -> Call[list[CudaRegionStatus]]:
    request = pb.CudaSharedMemoryStatusRequest(name=name)
    return Call("CudaSharedMemoryStatus", request, rq.parse_cuda_status)


def upload_model(
    name: str,
    source: rq.UploadSource,
    *,
    version: int,
    filename: str,
    config_json: str,
    chunk_bytes: int,
    progress: rq.ProgressFn | None,
) -> Call[UploadResult]:
    messages = rq.upload_requests(
        name,
        source,
        version=version,
        filename=filename,
        config_json=config_json,
        chunk_bytes=chunk_bytes,
        progress=progress,
    )
    return Call("UploadModel", messages, rq.parse_upload_response, upload=True)


def stream_result(
    response: pb.ModelStreamInferResponse, raise_errors: bool
) -> InferResult | InferenceServerError:
    """One ModelStreamInfer response's result, or its error (raised when `raise_errors`)."""
    if not response.error_message:
        return rq.parse_infer_response(response.infer_response)
    error = InferenceServerError(grpc.StatusCode.UNKNOWN, response.error_message)
    if raise_errors:
        raise error
    return error
