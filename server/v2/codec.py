"""ModelInferRequest to validated numpy inputs, and outputs back to a ModelInferResponse.

The REST transport reads its requests into the same message, so both are checked here."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from trtserve.protocol import datatypes, tensors
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.dataplane.shared_memory import Lease
from trtserve.server.dataplane.tensor_references import (
    BYTE_SIZE,
    OFFSET,
    REGION,
    TensorReference,
    check_input_size,
    input_array,
    output_target,
)
from trtserve.server.errors import InvalidArgument
from trtserve.server.limits import (
    RequestLimits,
    check_bytes_elements,
    check_dimensions,
    check_tensor_elements,
)
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.runtime.tensor_buffers import DeviceArray, PlacedOutput
from trtserve.server.scheduler.request import InferenceRequest, InferenceResponse
from trtserve.server.specs import TensorSpec


class _Input(NamedTuple):
    """One input tensor's header, read from the message once (each read builds objects)."""

    name: str
    datatype: str
    shape: list[int]
    typed: bool
    # Set when the client passed the tensor by reference (shared memory).
    reference: TensorReference | None


class CheckedRequest(NamedTuple):
    """A request whose headers passed every check, its tensors not decoded yet."""

    request: pb.ModelInferRequest
    model: ServingModel
    headers: list[_Input]
    # Raw data of the inputs sent inline, in the order of `inputs` (references have none).
    raw: list[bytes | memoryview]
    deadline: float | None
    # Decoding builds objects per element (BYTES, typed contents) for this many elements.
    per_element: int
    # Requested outputs to be written into shared memory.
    output_references: dict[str, TensorReference]

    @property
    def regions(self) -> dict[str, str]:
        """The shared-memory regions the request references, each with the first tensor
        that names it (for messages)."""
        regions: dict[str, str] = {}
        for h in self.headers:
            if h.reference is not None:
                regions.setdefault(h.reference.region, f"input '{h.name}'")
        for name, reference in self.output_references.items():
            regions.setdefault(reference.region, f"requested output '{name}'")
        return regions

    @property
    def inline_bytes(self) -> int:
        """Bytes of input data carried in the message (raw contents)."""
        return sum(len(data) for data in self.raw)

    @property
    def input_references(self) -> tuple[TensorReference, ...]:
        """The inputs passed by reference."""
        return tuple(h.reference for h in self.headers if h.reference is not None)

    def decode(self, lease: Lease | None) -> InferenceRequest:
        """The tensors decoded (see decode_tensors)."""
        return decode_tensors(self, lease)


def check_request(
    request: pb.ModelInferRequest,
    model: ServingModel,
    deadline: float | None,
    limits: RequestLimits,
    raw_inputs: Sequence[bytes | memoryview] | None = None,
) -> CheckedRequest:
    """Validate a request's headers against the model and the limits, decoding nothing.

    `raw_inputs` are the request's raw input tensors when they were taken out of the message
    as it was parsed (infer_wire); None reads them from the message.
    """
    raw: list[bytes | memoryview] = list(
        request.raw_input_contents if raw_inputs is None else raw_inputs
    )
    headers = [_header(t, bool(raw)) for t in request.inputs]
    _check_raw_layout(headers, raw)
    _check_input_names(headers, model)
    per_element = 0
    bytes_counts: dict[str, int] | None = None
    for header in headers:
        spec = model.inputs[header.name]
        _check_datatype(model.name, header.name, spec, header.datatype)
        _check_shape(model, spec, header.shape)
        count = check_tensor_elements(
            model.name, header.name, header.shape, limits.max_tensor_elements
        )
        if count == 0:
            check_dimensions(model.name, header.name, header.shape, limits.max_tensor_elements)
        if header.reference is not None:
            check_input_size(
                model.name, header.name, header.datatype, header.shape, header.reference
            )
        if header.datatype == "BYTES":
            bytes_counts = bytes_counts or {}
            bytes_counts[header.name] = count
            per_element += count
        elif not raw and header.reference is None:
            per_element += count
    if bytes_counts:
        check_bytes_elements(model.name, bytes_counts, limits.max_bytes_elements)
    outputs = _output_references(request, model)
    return CheckedRequest(request, model, headers, raw, deadline, per_element, outputs)


def decode_tensors(checked: CheckedRequest, lease: Lease | None) -> InferenceRequest:
    """Decode the tensors of a checked request (zero-copy when raw numeric or referenced).

    `lease` holds the regions the request references (None when it references none).
    """
    request, model, headers, raw = checked.request, checked.model, checked.headers, checked.raw
    arrays: dict[str, np.ndarray | DeviceArray] = {}
    raw_index = 0
    for index, header in enumerate(headers):
        if header.reference is not None:
            assert lease is not None, "a request with references is decoded under a lease"
            arrays[header.name] = input_array(
                lease, header.name, header.reference, header.datatype, header.shape
            )
            continue
        arrays[header.name] = _decode_tensor(request, index, raw_index, header, raw)
        raw_index += 1
    for name, spec in model.inputs.items():
        if spec.reshape is not None and name in arrays:
            arrays[name] = _as_model_shape(model, spec, arrays[name])
    batch_size = _batch_size(model, headers)
    targets = {}
    for name, reference in checked.output_references.items():
        assert lease is not None, "a request with references is decoded under a lease"
        targets[name] = output_target(lease, name, reference)
    return InferenceRequest(
        arrays, _output_names(request, model), batch_size, checked.deadline, targets
    )


def _as_model_shape(
    model: ServingModel, spec: TensorSpec, array: np.ndarray | DeviceArray
) -> np.ndarray | DeviceArray:
    """An input in the shape the model has (its config's reshape); the same elements."""
    batch = array.shape[:1] if model.settings.max_batch_size > 0 else ()
    assert spec.reshape is not None
    shape = (*batch, *spec.reshape)
    if isinstance(array, np.ndarray):
        return array.reshape(shape)
    return dataclasses.replace(array, shape=shape)


def _client_shape(model: ServingModel, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """An output's shape as clients see it: the config's dims where it reshapes the model's."""
    spec = model.outputs.get(name)
    if spec is None or spec.reshape is None:
        return shape
    batch = shape[:1] if model.settings.max_batch_size > 0 else ()
    return (*batch, *spec.shape)


def encode_response(
    request: pb.ModelInferRequest, model: ServingModel, response: InferenceResponse
) -> pb.ModelInferResponse:
    """The response as a message (for streams). Outputs go back raw: tritonclient reads that."""
    reply, views = _response_parts(request, model, response)
    for view in views:
        reply.raw_output_contents.append(view.tobytes())
    return reply


def encode_response_bytes(
    request: pb.ModelInferRequest, model: ServingModel, response: InferenceResponse
) -> bytes:
    """The serialized response, built so that each output's bytes are copied only once.

    Protobuf would copy a large output three times (into bytes, into the message, into the
    serialized form); appending the raw_output_contents fields by hand is one copy. A parser
    accepts fields in any order, so the result is a valid ModelInferResponse. The rest of the
    message is the same for requests with outputs alike, so it is serialized once and cached.
    """
    described = [
        (name, _datatype(model, name, array), array) for name, array in response.outputs.items()
    ]
    signature = tuple(
        (name, datatype.name, _client_shape(model, name, array.shape))
        for name, datatype, array in described
    )
    parts: list[bytes | memoryview] = [_response_header(model.name, model.version, signature)]
    if request.id:
        identifier = request.id.encode()
        parts += [_ID_TAG, _varint(len(identifier)), identifier]
    for _name, datatype, array in described:
        view = _raw(array, datatype)
        parts += [_RAW_OUTPUT_TAG, _varint(view.nbytes), view]
    return b"".join(parts)


def _raw(array: np.ndarray | PlacedOutput, datatype: datatypes.Datatype) -> memoryview:
    """An output's raw_output_contents entry: empty for one placed in shared memory.

    Triton sends an (empty) entry for every output, so entries stay aligned with outputs.
    """
    if isinstance(array, PlacedOutput):
        return memoryview(b"")
    return tensors.raw_view(array, datatype)


class ResponseOutput(NamedTuple):
    """One output of a response as clients see it: datatype, shape (the config's dims where
    it reshapes the model's) and data (a PlacedOutput when written into shared memory)."""

    name: str
    datatype: datatypes.Datatype
    shape: tuple[int, ...]
    array: np.ndarray | PlacedOutput


def response_outputs(model: ServingModel, response: InferenceResponse) -> list[ResponseOutput]:
    """Every output of a response, in the response's order."""
    return [
        ResponseOutput(
            name,
            _datatype(model, name, array),
            _client_shape(model, name, array.shape),
            array,
        )
        for name, array in response.outputs.items()
    ]


def output_datatypes(
    model: ServingModel, response: InferenceResponse
) -> dict[str, datatypes.Datatype]:
    """Each output's protocol datatype (numpy cannot tell BF16 apart)."""
    return {name: _datatype(model, name, array) for name, array in response.outputs.items()}


@functools.lru_cache(maxsize=1024)
def _response_header(
    model: str, version: int, outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
) -> bytes:
    """A serialized ModelInferResponse without its id and raw output contents."""
    reply = pb.ModelInferResponse(model_name=model, model_version=str(version))
    for name, datatype, shape in outputs:
        reply.outputs.add(name=name, datatype=datatype, shape=shape)
    return reply.SerializeToString()


def _datatype(
    model: ServingModel, name: str, array: np.ndarray | PlacedOutput
) -> datatypes.Datatype:
    spec = model.outputs.get(name)
    if spec is not None and spec.datatype == "BF16":
        return datatypes.from_name("BF16")
    return datatypes.from_numpy(array.dtype)


# Fields 3 (id) and 6 (raw_output_contents), wire type 2 (length-delimited).
_ID_TAG = bytes([(3 << 3) | 2])
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _response_parts(
    request: pb.ModelInferRequest, model: ServingModel, response: InferenceResponse
) -> tuple[pb.ModelInferResponse, list[memoryview]]:
    reply = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request.id
    )
    views = []
    for name, array in response.outputs.items():
        datatype = _datatype(model, name, array)
        shape = _client_shape(model, name, array.shape)
        reply.outputs.add(name=name, datatype=datatype.name, shape=shape)
        views.append(_raw(array, datatype))
    return reply, views


def _check_raw_layout(headers: Sequence[_Input], raw: Sequence[bytes | memoryview]) -> None:
    inline = sum(1 for h in headers if h.reference is None)
    if raw and len(raw) != inline:
        raise InvalidArgument(
            f"raw_input_contents: expected one entry per input not in shared memory "
            f"({inline}), received {len(raw)}"
        )
    typed = [h.name for h in headers if h.typed]
    if typed and any(h.name == typed[0] and h.reference is not None for h in headers):
        raise InvalidArgument(
            f"input '{typed[0]}': has contents although it is passed by reference "
            f"('{REGION}'); send it one way"
        )
    if typed:
        raise InvalidArgument(
            f"input '{typed[0]}': has typed contents although the request uses "
            "raw_input_contents; send every input one way"
        )


def _header(tensor: pb.ModelInferRequest.InferInputTensor, raw: bool) -> _Input:
    reference = (
        _reference(f"input '{tensor.name}'", tensor.parameters) if tensor.parameters else None
    )
    # Contents beside raw data or a reference: the input would be sent two ways.
    typed = (raw or reference is not None) and tensor.HasField("contents")
    return _Input(tensor.name, tensor.datatype, list(tensor.shape), typed, reference)


def _reference(field: str, parameters: Mapping[str, pb.InferParameter]) -> TensorReference | None:
    """The shared-memory reference in a tensor's parameters, or None when it has none."""
    if REGION not in parameters:
        for name in (OFFSET, BYTE_SIZE):
            if name in parameters:
                raise InvalidArgument(
                    f"{field}: parameter '{name}' needs '{REGION}'; expected both, "
                    f"received only '{name}'"
                )
        return None
    region_param = parameters[REGION]
    if region_param.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(
            f"{field}: parameter '{REGION}': expected string_param, received "
            f"{region_param.WhichOneof('parameter_choice')}"
        )
    if BYTE_SIZE not in parameters:
        raise InvalidArgument(
            f"{field}: parameter '{BYTE_SIZE}': expected with '{REGION}', received none"
        )
    byte_size = _non_negative(field, BYTE_SIZE, parameters[BYTE_SIZE])
    offset = _non_negative(field, OFFSET, parameters[OFFSET]) if OFFSET in parameters else 0
    return TensorReference(region_param.string_param, offset, byte_size)


def _non_negative(field: str, name: str, param: pb.InferParameter) -> int:
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"{field}: parameter '{name}': expected int64_param, received {kind}")
    value = int(getattr(param, kind))
    if value < 0:
        raise InvalidArgument(
            f"{field}: parameter '{name}': expected a non-negative integer, received {value}"
        )
    return value


def _output_references(
    request: pb.ModelInferRequest, model: ServingModel
) -> dict[str, TensorReference]:
    references: dict[str, TensorReference] = {}
    for out in request.outputs:
        if not out.parameters:
            continue
        reference = _reference(f"requested output '{out.name}'", out.parameters)
        if reference is not None and out.name in model.outputs:
            references[out.name] = reference
    return references


def _check_input_names(headers: Sequence[_Input], model: ServingModel) -> None:
    seen: set[str] = set()
    for header in headers:
        if header.name in seen:
            raise InvalidArgument(f"input '{header.name}': sent more than once")
        seen.add(header.name)
        if header.name not in model.inputs:
            raise InvalidArgument(
                f"unexpected input '{header.name}' for model '{model.name}'; "
                f"expected inputs: {sorted(model.inputs)}"
            )
    if len(seen) != len(model.inputs):
        missing = sorted(set(model.inputs) - seen)
        raise InvalidArgument(
            f"model '{model.name}': missing input '{missing[0]}'; "
            f"expected inputs: {sorted(model.inputs)}, received: {sorted(seen)}"
        )


def _check_datatype(model: str, name: str, spec: TensorSpec, received: str) -> None:
    if received != spec.datatype:
        raise InvalidArgument(
            f"input '{name}' of model '{model}': expected datatype {spec.datatype}, "
            f"received {received or '(empty)'}"
        )


def _check_shape(model: ServingModel, spec: TensorSpec, shape: list[int]) -> None:
    batched = model.settings.max_batch_size > 0
    expected = _expected_shape(spec.shape, batched)
    if not _fits(shape, expected):
        raise InvalidArgument(
            f"input '{spec.name}' of model '{model.name}': expected shape {list(expected)} "
            f"(-1 = any size), received {shape}"
        )
    if batched and not 1 <= shape[0] <= model.settings.max_batch_size:
        raise InvalidArgument(
            f"input '{spec.name}' of model '{model.name}': batch size must be 1 to "
            f"max_batch_size {model.settings.max_batch_size}, received {shape[0]}"
        )


def _fits(shape: list[int], expected: tuple[int, ...]) -> bool:
    """Whether `shape` matches `expected` (-1: any size), dimension by dimension."""
    if len(shape) != len(expected):
        return False
    # A loop, not any() over a generator: this runs for every input of every request.
    for d, e in zip(shape, expected, strict=True):  # noqa: SIM110
        if d < 0 or (e >= 0 and d != e):
            return False
    return True


@functools.cache
def _expected_shape(shape: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    """A request's shape for a tensor of `shape` (-1: any size), with the batch dimension."""
    return ((-1,) if batched else ()) + tuple(shape)


def _decode_tensor(
    request: pb.ModelInferRequest,
    index: int,
    raw_index: int,
    header: _Input,
    raw: Sequence[bytes | memoryview],
) -> np.ndarray:
    shape = header.shape
    try:
        if raw:
            data = raw[raw_index]
            if header.datatype == "BYTES" and tensors.element_count(shape) > len(data) // 4:
                raise tensors.TensorDataError(
                    f"input '{header.name}': BYTES shape {shape} needs at least "
                    f"{4 * tensors.element_count(shape)} bytes, received {len(data)}"
                )
            return tensors.from_raw(header.name, header.datatype, shape, data)
        contents = request.inputs[index].contents
        return tensors.from_contents(header.name, header.datatype, shape, contents)
    except tensors.TensorDataError as error:
        raise InvalidArgument(str(error)) from None


def _batch_size(model: ServingModel, headers: Sequence[_Input]) -> int:
    if model.settings.max_batch_size <= 0 or not headers:
        return 1
    sizes = {h.name: h.shape[0] for h in headers}
    if len(set(sizes.values())) > 1:
        raise InvalidArgument(
            f"model '{model.name}': every input must have the same batch size (dimension 0), "
            f"received {sizes}"
        )
    return headers[0].shape[0]


def _output_names(request: pb.ModelInferRequest, model: ServingModel) -> tuple[str, ...]:
    if not request.outputs:
        return tuple(model.outputs)
    names: dict[str, None] = {}
    for out in request.outputs:
        if out.name not in model.outputs:
            raise InvalidArgument(
                f"unexpected requested output '{out.name}' for model '{model.name}'; "
                f"expected outputs: {sorted(model.outputs)}"
            )
        if out.name in names:
            # Two entries could name two different shared-memory targets: refuse, as Triton.
            raise InvalidArgument(
                f"requested output '{out.name}': requested more than once; expected each "
                "output at most once"
            )
        names[out.name] = None
    return tuple(names)
