"""A REST infer request (JSON, with binary tensor data after it) as a v2 ModelInferRequest,
and an inference response as REST JSON with binary output data after it.

Every input sent in the body becomes raw tensor bytes (binary data as a view of the body, JSON
`data` converted once with numpy), so the request is checked and decoded by the same code as a
gRPC one (server/v2/codec.py), with the same messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtserve.protocol import datatypes, tensors
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.dataplane.tensor_references import REGION
from trtserve.server.errors import InvalidArgument
from trtserve.server.limits import check_tensor_elements
from trtserve.server.rest.json_messages import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    field_of,
    json_kind,
    read_object,
    required_field,
)
from trtserve.server.runtime.tensor_buffers import PlacedOutput
from trtserve.server.v2.codec import ResponseOutput

# The binary tensor data extension: the JSON's length when binary data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
CLASSIFICATION = "classification"
# JSON numbers a datatype accepts, by numpy kind: integers for integer types, any number for
# floating-point ones, true/false for BOOL.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


@dataclass
class RestInferRequest:
    """A REST infer request read into a v2 message and its inputs' raw bytes."""

    message: pb.ModelInferRequest
    # One entry per input not passed by reference, in the order of the message's inputs.
    raw: list[bytes | memoryview]
    # Outputs whose entry says binary_data true or false.
    binary: dict[str, bool] = field(default_factory=dict)
    # For the others: `binary_data_output` (JSON `data` unless set).
    binary_by_default: bool = False

    def wants_binary(self, output: str) -> bool:
        """Whether `output` goes back as binary data after the JSON (else as JSON `data`)."""
        return self.binary.get(output, self.binary_by_default)


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """The JSON part and the binary part of a body, by the Inference-Header-Content-Length."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidArgument(
            f"header {HEADER_LENGTH}: expected the JSON part's length in bytes, received "
            f"{header_length!r}"
        ) from None
    if not 0 <= length <= len(view):
        raise InvalidArgument(
            f"header {HEADER_LENGTH}: expected 0 to {len(view)} (the body's length), "
            f"received {length}"
        )
    return view[:length], view[length:]


def read_request(
    text: memoryview,
    binary: memoryview,
    model_name: str,
    model_version: str,
    max_elements: int,
) -> RestInferRequest:
    """The request of a REST infer call to `model_name` (`model_version`: "" for any), from
    the JSON and binary parts of its body (split_body).

    JSON `data` is converted only for a shape within `max_elements` (max_tensor_elements), and
    only as many elements as the shape holds, so a request over the limits costs no more.
    """
    document = read_object(text, "infer request")
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    message.id = field_of(document, "id", str, "", "")
    parameters = field_of(document, "parameters", dict, "", {})
    _parameters(message.parameters, parameters, "request parameters: ")
    inputs = required_field(document, "inputs", list, "infer request: ")
    raw = _inputs(message, inputs, binary, max_elements)
    request = RestInferRequest(message, raw)
    default = parameters.get(BINARY_DATA_OUTPUT, False)
    if not isinstance(default, bool):
        raise InvalidArgument(
            f"request parameters: '{BINARY_DATA_OUTPUT}': expected true or false, received "
            f"{default!r}"
        )
    request.binary_by_default = default
    for index, entry in enumerate(field_of(document, "outputs", list, "", [])):
        _output(request, entry, index)
    return request


def _inputs(
    message: pb.ModelInferRequest, entries: Sequence[Any], binary: memoryview, max_elements: int
) -> list[bytes | memoryview]:
    raw: list[bytes | memoryview] = []
    cursor = 0
    for index, entry in enumerate(entries):
        where = f"inputs[{index}]: "
        if not isinstance(entry, dict):
            raise InvalidArgument(
                f"{where}expected a JSON object, received a JSON {json_kind(entry)}"
            )
        name = required_field(entry, "name", str, where)
        where = f"input '{name}': "
        datatype = required_field(entry, "datatype", str, where)
        shape = required_field(entry, "shape", list, where)
        if not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= INT64_MAX for d in shape
        ):
            raise InvalidArgument(
                f"{where}'shape': expected an array of integers from 0 to {INT64_MAX}, "
                f"received {shape}"
            )
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        parameters = dict(field_of(entry, "parameters", dict, where, {}))
        size = parameters.pop(BINARY_DATA_SIZE, None)
        _parameters(tensor.parameters, parameters, where + "parameters: ")
        by_reference = REGION in parameters
        has_data = "data" in entry
        if by_reference:
            if size is not None or has_data:
                raise InvalidArgument(
                    f"{where}has data although it is passed by reference ('{REGION}'); "
                    "send it one way"
                )
            continue
        if size is not None:
            if has_data:
                raise InvalidArgument(
                    f"{where}has both 'data' and parameter '{BINARY_DATA_SIZE}'; send it one way"
                )
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(
                    f"{where}parameter '{BINARY_DATA_SIZE}': expected a non-negative integer, "
                    f"received {size!r}"
                )
            if cursor + size > len(binary):
                raise InvalidArgument(
                    f"{where}parameter '{BINARY_DATA_SIZE}': {size} bytes from byte {cursor} of "
                    f"the binary data, which has {len(binary)}"
                )
            raw.append(binary[cursor : cursor + size])
            cursor += size
        elif has_data:
            check_tensor_elements(message.model_name, name, shape, max_elements)
            raw.append(json_data(name, datatype, shape, entry["data"]))
        else:
            raise InvalidArgument(
                f"{where}expected 'data', parameter '{BINARY_DATA_SIZE}' or '{REGION}', "
                "received none"
            )
    if cursor != len(binary):
        raise InvalidArgument(
            f"binary data: expected {cursor} bytes (the inputs' '{BINARY_DATA_SIZE}'), "
            f"received {len(binary)}"
        )
    return raw


def _output(request: RestInferRequest, entry: Any, index: int) -> None:
    where = f"outputs[{index}]: "
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{where}expected a JSON object, received a JSON {json_kind(entry)}")
    name = required_field(entry, "name", str, where)
    where = f"requested output '{name}': "
    tensor = request.message.outputs.add(name=name)
    parameters = dict(field_of(entry, "parameters", dict, where, {}))
    if CLASSIFICATION in parameters:
        raise InvalidArgument(f"{where}parameter '{CLASSIFICATION}': not supported by this server")
    binary = parameters.pop(BINARY_DATA, None)
    if binary is not None and not isinstance(binary, bool):
        raise InvalidArgument(
            f"{where}parameter '{BINARY_DATA}': expected true or false, received {binary!r}"
        )
    if binary and REGION in parameters:
        raise InvalidArgument(
            f"{where}parameter '{BINARY_DATA}': true although the output goes to shared memory "
            f"('{REGION}'); expected one of them"
        )
    if binary is not None:
        request.binary[name] = binary
    _parameters(tensor.parameters, parameters, where + "parameters: ")


def _parameters(target: Any, parameters: dict[str, Any], where: str) -> None:
    """JSON parameters as v2 InferParameters: strings, integers and booleans."""
    for key, value in parameters.items():
        if key.startswith("triton_"):
            raise InvalidArgument(
                f"{where}'{key}': names starting with 'triton_' are reserved; expected another"
            )
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            param.int64_param = value
        elif isinstance(value, int) and INT64_MAX < value <= UINT64_MAX:
            param.uint64_param = value
        elif isinstance(value, int):
            raise InvalidArgument(
                f"{where}'{key}': expected an integer from {INT64_MIN} to {UINT64_MAX}, "
                f"received {value}"
            )
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidArgument(
                f"{where}'{key}': expected a string, number or boolean, received a JSON "
                f"{json_kind(value)}"
            )


def json_data(name: str, datatype: str, shape: Sequence[int], data: Any) -> bytes:
    """An input's JSON `data` (flat or nested in the tensor's shape) as raw tensor bytes."""
    where = f"input '{name}': 'data'"
    try:
        kind = datatypes.from_name(datatype)
    except KeyError as error:
        raise InvalidArgument(f"input '{name}': 'datatype': {error.args[0]}") from None
    expected = tensors.element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if kind.name == "BYTES":
        elements = _flat_strings(where, data, expected)
        array = np.array(elements, dtype=object)
    else:
        array = _numbers(where, kind, data)
    if array.size != expected:
        received = "more" if array.size > expected and kind.name == "BYTES" else array.size
        raise InvalidArgument(
            f"{where}: expected {expected} elements (shape {list(shape)}), received {received}"
        )
    return tensors.to_raw(array, kind)


def _flat_strings(where: str, data: list[Any], expected: int) -> list[bytes]:
    """The strings of nested lists, in order; stops one past `expected` (a count mismatch)."""
    elements: list[bytes] = []
    pending = [iter(data)]
    while pending and len(elements) <= expected:
        for item in pending[-1]:
            if len(elements) > expected:
                break
            if isinstance(item, list):
                pending.append(iter(item))
                break
            if not isinstance(item, str):
                raise InvalidArgument(
                    f"{where}: expected strings for BYTES, received a JSON {json_kind(item)}"
                )
            elements.append(item.encode("utf-8", "surrogatepass"))
        else:
            pending.pop()
    return elements


def _numbers(where: str, kind: datatypes.Datatype, data: list[Any]) -> np.ndarray:
    """JSON numbers as an array of the datatype, refusing values it cannot hold exactly."""
    try:
        read = np.array(data)
    except ValueError:
        raise InvalidArgument(
            f"{where}: expected an array of numbers, flat or nested in the shape, received a "
            "ragged one"
        ) from None
    if read.size == 0:
        return np.zeros(0, kind.dtype)
    target = np.dtype(np.float32) if kind.name == "BF16" else kind.dtype
    accepted = _ACCEPTED_KINDS[target.kind]
    if read.dtype.kind not in accepted:
        wanted = {"b": "true or false", "iu": "integers", "iuf": "numbers"}[accepted]
        raise InvalidArgument(
            f"{where}: expected {wanted} for {kind.name}, received {_describe(read)}"
        )
    if target.kind in "iu":
        info = np.iinfo(target.type)  # type: ignore[type-var]
        if read.min() < info.min or read.max() > info.max:
            raise InvalidArgument(
                f"{where}: expected integers from {info.min} to {info.max} for {kind.name}, "
                f"received {read.min() if read.min() < info.min else read.max()}"
            )
    array = read.astype(target).reshape(-1)
    if kind.name == "BF16":
        # The upper half of each float32, rounded to nearest even: BF16's bit pattern.
        bits = array.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype(np.uint16)
    return array


def _describe(read: np.ndarray) -> str:
    kinds = {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "numbers with a fraction",
        "U": "strings",
        "O": "mixed values",
    }
    return kinds.get(read.dtype.kind, f"values of kind {read.dtype.kind}")


def response_document(
    request: RestInferRequest, model_version: int, outputs: Sequence[ResponseOutput]
) -> tuple[bytes, list[memoryview]]:
    """The response's JSON and the binary data that follows it (in the order of the outputs).

    An output in shared memory has only its header; a binary one its `binary_data_size`
    parameter; a JSON one its `data`, flat (Triton's form, which its clients read).
    """
    entries: list[dict[str, Any]] = []
    binary: list[memoryview] = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype.name,
            "shape": list(output.shape),
        }
        if isinstance(output.array, PlacedOutput):
            pass
        elif request.wants_binary(output.name):
            view = tensors.raw_view(output.array, output.datatype)
            entry["parameters"] = {BINARY_DATA_SIZE: view.nbytes}
            binary.append(view)
        else:
            entry["data"] = _json_values(output.name, output.datatype, output.array)
        entries.append(entry)
    message = request.message
    document: dict[str, Any] = {
        "model_name": message.model_name,
        "model_version": str(model_version),
    }
    if message.id:
        document["id"] = message.id
    document["outputs"] = entries
    return json.dumps(document, separators=(",", ":")).encode(), binary


def _json_values(name: str, datatype: datatypes.Datatype, array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if datatype.name == "BYTES":
        values = []
        for index, element in enumerate(flat):
            data = element.encode() if isinstance(element, str) else bytes(element)
            try:
                values.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"output '{name}': element {index} is not UTF-8 text, which JSON "
                    f"cannot carry; request it with parameter '{BINARY_DATA}': true"
                ) from None
        return values
    if datatype.name == "BF16":
        widened = (flat.astype(np.uint32) << 16).view(np.float32)
        return list(widened.tolist())
    return list(flat.tolist())
