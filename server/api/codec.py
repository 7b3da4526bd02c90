"""ModelInferRequest to validated numpy inputs, and outputs back to a ModelInferResponse."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from trtserve.protocol import datatypes, tensors
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.errors import InvalidArgument
from trtserve.server.limits import (
    RequestLimits,
    check_bytes_elements,
    check_dimensions,
    check_tensor_elements,
)
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.scheduler.request import InferenceRequest, InferenceResponse
from trtserve.server.specs import TensorSpec


class _Input(NamedTuple):
    """One input tensor's header, read from the message once (each read builds objects)."""

    name: str
    datatype: str
    shape: list[int]
    typed: bool


class CheckedRequest(NamedTuple):
    """A request whose headers passed every check, its tensors not decoded yet."""

    request: pb.ModelInferRequest
    model: ServingModel
    headers: list[_Input]
    raw: list[bytes]
    deadline: float | None
    # Decoding builds objects per element (BYTES, typed contents) for this many elements.
    per_element: int

    def decode(self) -> InferenceRequest:
        """The tensors decoded (see decode_tensors)."""
        return decode_tensors(self)


def check_request(
    request: pb.ModelInferRequest,
    model: ServingModel,
    deadline: float | None,
    limits: RequestLimits,
) -> CheckedRequest:
    """Validate a request's headers against the model and the limits, decoding nothing."""
    raw = list(request.raw_input_contents)
    headers = [
        _Input(t.name, t.datatype, list(t.shape), bool(raw) and t.HasField("contents"))
        for t in request.inputs
    ]
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
        if header.datatype == "BYTES":
            bytes_counts = bytes_counts or {}
            bytes_counts[header.name] = count
            per_element += count
        elif not raw:
            per_element += count
    if bytes_counts:
        check_bytes_elements(model.name, bytes_counts, limits.max_bytes_elements)
    return CheckedRequest(request, model, headers, raw, deadline, per_element)


def decode_tensors(checked: CheckedRequest) -> InferenceRequest:
    """Decode the tensors of a checked request (zero-copy when raw numeric)."""
    request, model, headers, raw = checked.request, checked.model, checked.headers, checked.raw
    arrays: dict[str, np.ndarray] = {}
    for index, header in enumerate(headers):
        arrays[header.name] = _decode_tensor(request, index, header, raw)
    batch_size = _batch_size(model, headers)
    return InferenceRequest(arrays, _output_names(request, model), batch_size, checked.deadline)


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
    signature = tuple((name, datatype.name, array.shape) for name, datatype, array in described)
    parts: list[bytes | memoryview] = [_response_header(model.name, model.version, signature)]
    if request.id:
        identifier = request.id.encode()
        parts += [_ID_TAG, _varint(len(identifier)), identifier]
    for _name, datatype, array in described:
        view = tensors.raw_view(array, datatype)
        parts += [_RAW_OUTPUT_TAG, _varint(view.nbytes), view]
    return b"".join(parts)


@functools.lru_cache(maxsize=1024)
def _response_header(
    model: str, version: int, outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
) -> bytes:
    """A serialized ModelInferResponse without its id and raw output contents."""
    reply = pb.ModelInferResponse(model_name=model, model_version=str(version))
    for name, datatype, shape in outputs:
        reply.outputs.add(name=name, datatype=datatype, shape=shape)
    return reply.SerializeToString()


def _datatype(model: ServingModel, name: str, array: np.ndarray) -> datatypes.Datatype:
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
        reply.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        views.append(tensors.raw_view(array, datatype))
    return reply, views


def _check_raw_layout(headers: Sequence[_Input], raw: Sequence[bytes]) -> None:
    if raw and len(raw) != len(headers):
        raise InvalidArgument(
            f"raw_input_contents: expected one entry per input ({len(headers)}), "
            f"received {len(raw)}"
        )
    typed = [h.name for h in headers if h.typed]
    if typed:
        raise InvalidArgument(
            f"input '{typed[0]}': has typed contents although the request uses "
            "raw_input_contents; send every input one way"
        )


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
    if len(shape) != len(expected) or any(
        d < 0 or (e >= 0 and d != e) for d, e in zip(shape, expected, strict=True)
    ):
        raise InvalidArgument(
            f"input '{spec.name}' of model '{model.name}': expected shape {list(expected)} "
            f"(-1 = any size), received {shape}"
        )
    if batched and not 1 <= shape[0] <= model.settings.max_batch_size:
        raise InvalidArgument(
            f"input '{spec.name}' of model '{model.name}': batch size must be 1 to "
            f"max_batch_size {model.settings.max_batch_size}, received {shape[0]}"
        )


@functools.cache
def _expected_shape(shape: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    """A request's shape for a tensor of `shape` (-1: any size), with the batch dimension."""
    return ((-1,) if batched else ()) + tuple(shape)


def _decode_tensor(
    request: pb.ModelInferRequest, index: int, header: _Input, raw: Sequence[bytes]
) -> np.ndarray:
    shape = header.shape
    try:
        if raw:
            data = raw[index]
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
        names[out.name] = None
    return tuple(names)
