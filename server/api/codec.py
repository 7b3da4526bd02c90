"""ModelInferRequest to validated numpy inputs, and outputs back to a ModelInferResponse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trtserve.protocol import datatypes, tensors
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.errors import InvalidArgument
from trtserve.server.limits import check_tensor_elements
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.scheduler.request import InferenceRequest, InferenceResponse
from trtserve.server.specs import TensorSpec


def decode_request(
    request: pb.ModelInferRequest,
    model: ServingModel,
    deadline: float | None,
    max_tensor_elements: int,
) -> InferenceRequest:
    """Validate a request against the model and decode its tensors (zero-copy when raw).

    Each tensor's element count is checked against `max_tensor_elements` before decoding.
    """
    _check_raw_layout(request)
    _check_input_names(request, model)
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = model.inputs[tensor.name]
        _check_datatype(model.name, tensor.name, spec, tensor.datatype)
        shape = _check_shape(model, spec, list(tensor.shape))
        check_tensor_elements(model.name, tensor.name, shape, max_tensor_elements)
        arrays[tensor.name] = _decode_tensor(request, index, tensor, shape)
    batch_size = _batch_size(model, request)
    return InferenceRequest(arrays, _output_names(request, model), batch_size, deadline)


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
    accepts repeated fields in any position, so the result is a valid ModelInferResponse.
    """
    reply, views = _response_parts(request, model, response)
    parts: list[bytes | memoryview] = [reply.SerializeToString()]
    for view in views:
        parts += [_RAW_OUTPUT_TAG, _varint(view.nbytes), view]
    return b"".join(parts)


# Field 6 (raw_output_contents), wire type 2 (length-delimited).
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
        spec = model.outputs.get(name)
        if spec is not None and spec.datatype == "BF16":
            datatype = datatypes.from_name("BF16")
        else:
            datatype = datatypes.from_numpy(array.dtype)
        reply.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        views.append(tensors.raw_view(array, datatype))
    return reply, views


def _check_raw_layout(request: pb.ModelInferRequest) -> None:
    raw = len(request.raw_input_contents)
    if raw and raw != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents: expected one entry per input ({len(request.inputs)}), "
            f"received {raw}"
        )
    if raw:
        typed = [t.name for t in request.inputs if t.HasField("contents")]
        if typed:
            raise InvalidArgument(
                f"input '{typed[0]}': has typed contents although the request uses "
                "raw_input_contents; send every input one way"
            )


def _check_input_names(request: pb.ModelInferRequest, model: ServingModel) -> None:
    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name in seen:
            raise InvalidArgument(f"input '{tensor.name}': sent more than once")
        seen.add(tensor.name)
        if tensor.name not in model.inputs:
            raise InvalidArgument(
                f"unexpected input '{tensor.name}' for model '{model.name}'; "
                f"expected inputs: {sorted(model.inputs)}"
            )
    missing = sorted(set(model.inputs) - seen)
    if missing:
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


def _check_shape(model: ServingModel, spec: TensorSpec, shape: list[int]) -> list[int]:
    batched = model.settings.max_batch_size > 0
    expected = ([-1] if batched else []) + list(spec.shape)
    if len(shape) != len(expected) or any(
        d < 0 or (e >= 0 and d != e) for d, e in zip(shape, expected, strict=True)
    ):
        raise InvalidArgument(
            f"input '{spec.name}' of model '{model.name}': expected shape {expected} "
            f"(-1 = any size), received {shape}"
        )
    if batched and not 1 <= shape[0] <= model.settings.max_batch_size:
        raise InvalidArgument(
            f"input '{spec.name}' of model '{model.name}': batch size must be 1 to "
            f"max_batch_size {model.settings.max_batch_size}, received {shape[0]}"
        )
    return shape


def _decode_tensor(
    request: pb.ModelInferRequest,
    index: int,
    tensor: pb.ModelInferRequest.InferInputTensor,
    shape: Sequence[int],
) -> np.ndarray:
    try:
        if request.raw_input_contents:
            raw = request.raw_input_contents[index]
            if tensor.datatype == "BYTES" and tensors.element_count(shape) > len(raw) // 4:
                raise tensors.TensorDataError(
                    f"input '{tensor.name}': BYTES shape {list(shape)} needs at least "
                    f"{4 * tensors.element_count(shape)} bytes, received {len(raw)}"
                )
            return tensors.from_raw(tensor.name, tensor.datatype, shape, raw)
        return tensors.from_contents(tensor.name, tensor.datatype, shape, tensor.contents)
    except tensors.TensorDataError as error:
        raise InvalidArgument(str(error)) from None


def _batch_size(model: ServingModel, request: pb.ModelInferRequest) -> int:
    if model.settings.max_batch_size <= 0:
        return 1
    sizes = {t.name: int(t.shape[0]) for t in request.inputs}
    if len(set(sizes.values())) > 1:
        raise InvalidArgument(
            f"model '{model.name}': every input must have the same batch size (dimension 0), "
            f"received {sizes}"
        )
    return next(iter(sizes.values()))


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
