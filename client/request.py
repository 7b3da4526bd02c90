"""Protocol messages to and from the client's records; shared by the sync and asyncio clients.

Tensors go raw by default (`raw_input_contents`, what tritonclient sends); typed `contents`
on request; or by reference to a shared-memory region, in the tensor's parameters as
tritonclient's `set_shared_memory` sends them. Nothing here does I/O on the network.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from trtserve.client.types import (
    BatchStatistics,
    CudaRegionStatus,
    Duration,
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
    TensorMetadata,
    UploadResult,
)
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol.datatypes import Datatype, from_name
from trtserve.protocol.tensors import (
    fill_contents,
    from_contents,
    from_raw,
    raw_view,
    to_raw,
)

ProgressFn = Callable[[int, int], None]


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values to BF16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    patterns = ((bits + rounding) >> 16).astype(np.uint16)
    # Rounding could turn a NaN's payload into infinity; keep it a quiet NaN.
    return np.where(np.isnan(values), np.uint16(0x7FC0), patterns).astype(np.uint16)


def bf16_to_float32(patterns: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) to float32 values (exact)."""
    wide = np.ascontiguousarray(patterns, dtype=np.uint16).astype(np.uint32) << 16
    return wide.view(np.float32)


def _wire_array(inp: InferInput) -> tuple[np.ndarray, Datatype]:
    """The input's data in the numpy dtype its datatype travels as."""
    dt = from_name(inp.resolved_datatype)
    data = np.asarray(inp.data)
    if dt.name == "BYTES":
        if data.dtype.kind not in ("O", "S", "U"):
            raise ValueError(
                f"input '{inp.name}': BYTES needs an object, bytes or str array, "
                f"received dtype {data.dtype}"
            )
        return data, dt
    if dt.name == "BF16" and data.dtype.kind == "f":
        return float32_to_bf16(data), dt
    if data.dtype != dt.dtype:
        if not np.can_cast(data.dtype, dt.dtype, casting="same_kind"):
            raise ValueError(
                f"input '{inp.name}': datatype {dt.name} needs dtype {dt.dtype}, "
                f"received {data.dtype}"
            )
        data = data.astype(dt.dtype)
    return data, dt


def tensor_bytes(
    name: str, data: np.ndarray, datatype: str | None = None
) -> tuple[memoryview, str]:
    """An array's raw bytes as an input of `datatype` sends them, and that datatype's name.

    `datatype` defaults to the array's; the conversions are InferInput's (BF16 from floats).
    """
    array, dt = _wire_array(InferInput(name, data, datatype))
    return raw_view(array, dt), dt.name


# The tensor parameters of a reference, as tritonclient's set_shared_memory sends them.
REGION_PARAMETER = "shared_memory_region"
BYTE_SIZE_PARAMETER = "shared_memory_byte_size"
OFFSET_PARAMETER = "shared_memory_offset"


def _set_reference(
    what: str,
    parameters: Mapping[str, pb.InferParameter],
    region: str,
    byte_size: int,
    offset: int,
) -> None:
    """Name a span of a region in a tensor's parameters (the offset only when not 0)."""
    if not region:
        raise ValueError(f"{what}: the shared-memory region name is empty")
    if byte_size < 0 or offset < 0:
        raise ValueError(
            f"{what}: byte_size and offset must not be negative, "
            f"received byte_size {byte_size}, offset {offset}"
        )
    parameters[REGION_PARAMETER].string_param = region
    parameters[BYTE_SIZE_PARAMETER].int64_param = byte_size
    if offset:
        parameters[OFFSET_PARAMETER].int64_param = offset


def _add_reference_input(request: pb.ModelInferRequest, inp: SharedMemoryInput) -> None:
    datatype = from_name(inp.datatype).name  # KeyError names the accepted datatypes
    tensor = request.inputs.add(name=inp.name, datatype=datatype, shape=inp.shape)
    _set_reference(f"input '{inp.name}'", tensor.parameters, inp.region, inp.byte_size, inp.offset)


def build_infer_request(
    model: str,
    inputs: Sequence[InferInput | SharedMemoryInput],
    outputs: Sequence[str | SharedMemoryOutput] | None = None,
    *,
    version: str = "",
    request_id: str = "",
    use_typed_contents: bool = False,
) -> pb.ModelInferRequest:
    """A ModelInferRequest; `outputs=None` asks for every output the model has.

    Inputs given as SharedMemoryInput carry no data, only their reference; outputs given as
    SharedMemoryOutput are asked to be written into their region.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for inp in inputs:
        if isinstance(inp, SharedMemoryInput):
            _add_reference_input(request, inp)
            continue
        data, dt = _wire_array(inp)
        tensor = request.inputs.add(name=inp.name, datatype=dt.name, shape=data.shape)
        if not use_typed_contents:
            request.raw_input_contents.append(to_raw(data, dt))
        elif dt.contents_field is None:
            raise ValueError(
                f"input '{inp.name}': datatype {dt.name} has no typed contents field; "
                "send it raw (use_typed_contents=False)"
            )
        else:
            fill_contents(tensor.contents, data, dt)
    for out in outputs or ():
        if isinstance(out, str):
            request.outputs.add(name=out)
            continue
        requested = request.outputs.add(name=out.name)
        what = f"requested output '{out.name}'"
        _set_reference(what, requested.parameters, out.region, out.byte_size, out.offset)
    return request


def shared_memory_output_names(
    outputs: Sequence[str | SharedMemoryOutput] | None,
) -> frozenset[str]:
    """The names of the requested outputs to be written into shared memory."""
    return frozenset(o.name for o in outputs or () if isinstance(o, SharedMemoryOutput))


def build_request_message(request: InferRequest) -> pb.ModelInferRequest:
    """The ModelInferRequest of an InferRequest record (raw tensors)."""
    return build_infer_request(
        request.model,
        request.inputs,
        request.outputs,
        version=request.version,
        request_id=request.request_id,
    )


def parse_infer_response(
    response: pb.ModelInferResponse, in_shared_memory: Collection[str] = ()
) -> InferResult:
    """Output arrays from raw_output_contents when present, else from typed contents.

    Outputs named in `in_shared_memory` were written into a region: the result describes
    them (their raw_output_contents entry is empty, as Triton sends it).
    """
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ValueError(
            f"response of model '{response.model_name}': raw_output_contents must hold one "
            f"entry per output: expected {len(response.outputs)}, received {len(raw)}"
        )
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    placed: dict[str, TensorMetadata] = {}
    for i, out in enumerate(response.outputs):
        shape = list(out.shape)
        datatypes[out.name] = out.datatype
        if out.name in in_shared_memory:
            if raw and raw[i]:
                raise ValueError(
                    f"response of model '{response.model_name}': output '{out.name}' was "
                    f"asked in shared memory but came back inline ({len(raw[i])} bytes)"
                )
            placed[out.name] = TensorMetadata(out.name, out.datatype, tuple(shape))
        elif raw:
            arrays[out.name] = from_raw(out.name, out.datatype, shape, raw[i])
        else:
            arrays[out.name] = from_contents(out.name, out.datatype, shape, out.contents)
    return InferResult(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=arrays,
        datatypes=datatypes,
        shared_memory_outputs=placed,
    )


def _tensor_metadata(t: pb.ModelMetadataResponse.TensorMetadata) -> TensorMetadata:
    return TensorMetadata(name=t.name, datatype=t.datatype, shape=tuple(int(d) for d in t.shape))


def parse_system_status(
    response: pb.SystemSharedMemoryStatusResponse,
) -> list[SystemRegionStatus]:
    """SystemSharedMemoryStatusResponse to one status per region, by name."""
    return [
        SystemRegionStatus(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
        for _, r in sorted(response.regions.items())
    ]


def parse_cuda_status(response: pb.CudaSharedMemoryStatusResponse) -> list[CudaRegionStatus]:
    """CudaSharedMemoryStatusResponse to one status per region, by name."""
    return [
        CudaRegionStatus(name=r.name, device_id=r.device_id, byte_size=r.byte_size)
        for _, r in sorted(response.regions.items())
    ]


def parse_model_metadata(response: pb.ModelMetadataResponse) -> ModelMetadata:
    """ModelMetadataResponse to a ModelMetadata record."""
    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=tuple(_tensor_metadata(t) for t in response.inputs),
        outputs=tuple(_tensor_metadata(t) for t in response.outputs),
    )


def parse_server_metadata(response: pb.ServerMetadataResponse) -> ServerMetadata:
    """ServerMetadataResponse to a ServerMetadata record."""
    return ServerMetadata(
        name=response.name, version=response.version, extensions=tuple(response.extensions)
    )


def config_to_dict(response: pb.ModelConfigResponse) -> dict[str, object]:
    """The model configuration as a dict with the config file's field names (like tritonclient)."""
    return json_format.MessageToDict(response.config, preserving_proto_field_name=True)


def parse_repository_index(response: pb.RepositoryIndexResponse) -> list[ModelIndexEntry]:
    """RepositoryIndexResponse to one entry per model (version)."""
    return [
        ModelIndexEntry(name=m.name, version=m.version, state=m.state, reason=m.reason)
        for m in response.models
    ]


def _duration(d: pb.StatisticDuration) -> Duration:
    return Duration(count=d.count, ns=d.ns)


def parse_statistics(response: pb.ModelStatisticsResponse) -> list[ModelStatistics]:
    """ModelStatisticsResponse to one summary per model version."""
    result = []
    for s in response.model_stats:
        st = s.inference_stats
        result.append(
            ModelStatistics(
                name=s.name,
                version=s.version,
                last_inference_ms=s.last_inference,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                success=_duration(st.success),
                fail=_duration(st.fail),
                queue=_duration(st.queue),
                compute_input=_duration(st.compute_input),
                compute_infer=_duration(st.compute_infer),
                compute_output=_duration(st.compute_output),
                batch_stats=tuple(
                    BatchStatistics(
                        batch_size=b.batch_size,
                        compute_input=_duration(b.compute_input),
                        compute_infer=_duration(b.compute_infer),
                        compute_output=_duration(b.compute_output),
                    )
                    for b in s.batch_stats
                ),
            )
        )
    return result


def build_load_request(
    name: str, config: str | None = None, files: Mapping[str, bytes] | None = None
) -> pb.RepositoryModelLoadRequest:
    """A load request as tritonclient sends it: "config" JSON and "file:<version>/<name>" bytes.

    `files` keys are paths inside the model folder, e.g. "1/model.onnx".
    """
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        request.parameters["config"].string_param = config
    for path, data in (files or {}).items():
        request.parameters[f"file:{path}"].bytes_param = data
    return request


@dataclass(frozen=True)
class UploadSource:
    """A model file to upload: from memory or a path, with its size and sha256."""

    data: bytes | None
    path: Path | None
    total_bytes: int
    sha256: str

    @classmethod
    def open(cls, source: str | os.PathLike[str] | bytes) -> UploadSource:
        """Size and hash the file (reads a path once, in chunks)."""
        if isinstance(source, bytes):
            return cls(source, None, len(source), hashlib.sha256(source).hexdigest())
        path = Path(source)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return cls(None, path, path.stat().st_size, digest.hexdigest())

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The file's bytes in chunks of at most `chunk_bytes`."""
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), chunk_bytes):
                yield bytes(view[start : start + chunk_bytes])
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            while block := f.read(chunk_bytes):
                yield block


def upload_requests(
    name: str,
    source: UploadSource,
    *,
    version: int = 0,
    filename: str = "model.plan",
    config_json: str = "",
    chunk_bytes: int = 1 << 20,
    progress: ProgressFn | None = None,
) -> Iterator[tpb.UploadRequest]:
    """The UploadModel stream: a header, then data chunks; `progress(sent, total)` per chunk."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, received {chunk_bytes}")
    yield tpb.UploadRequest(
        header=tpb.UploadHeader(
            model_name=name,
            version=version,
            filename=filename,
            total_bytes=source.total_bytes,
            sha256=source.sha256,
            config_json=config_json,
        )
    )
    sent = 0
    for chunk in source.chunks(chunk_bytes):
        yield tpb.UploadRequest(data=chunk)
        sent += len(chunk)
        if progress is not None:
            progress(sent, source.total_bytes)


def parse_upload_response(response: tpb.UploadResponse) -> UploadResult:
    """UploadResponse to an UploadResult record."""
    return UploadResult(
        model_name=response.model_name,
        version=response.version,
        stored_bytes=response.stored_bytes,
        sha256=response.sha256,
    )


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random data of a v2 datatype: small values that no datatype overflows."""
    dt = from_name(datatype)
    size = tuple(shape)
    if dt.name == "BYTES":
        out = np.empty(size, dtype=np.object_)
        out.reshape(-1)[:] = [f"{v}".encode() for v in rng.integers(0, 1000, out.size)]
        return out
    if dt.name == "BOOL":
        return rng.random(size) < 0.5
    if dt.name == "BF16":
        return float32_to_bf16(rng.standard_normal(size, dtype=np.float32))
    if dt.dtype.kind == "f":
        return rng.standard_normal(size).astype(dt.dtype)
    return rng.integers(0, 100, size).astype(dt.dtype)


def random_inputs(
    metadata: ModelMetadata,
    *,
    batch: int = 1,
    max_batch_size: int = 0,
    rng: np.random.Generator | None = None,
    given: Mapping[str, np.ndarray] | None = None,
) -> list[InferInput]:
    """Inputs for every model input: `given` arrays, else random data of the right shape.

    When `max_batch_size > 0`, dimension 0 of the metadata shape is the batch and becomes
    `batch`; other variable dimensions become 1.
    """
    rng = rng if rng is not None else np.random.default_rng()
    given = given or {}
    inputs = []
    for t in metadata.inputs:
        if t.name in given:
            inputs.append(InferInput(t.name, given[t.name], t.datatype))
            continue
        dims = list(t.shape)
        if max_batch_size > 0 and dims:
            dims[0] = batch
        shape = [1 if d < 0 else d for d in dims]
        inputs.append(InferInput(t.name, random_tensor(t.datatype, shape, rng), t.datatype))
    return inputs
