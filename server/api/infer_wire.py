"""A ModelInferRequest read from its wire bytes without copying its raw input tensors.

protobuf copies every `raw_input_contents` entry when it parses a message, and again each time
one is read from it: two copies of every input tensor, made with the interpreter lock held,
for bytes the server only needs to look at. Here the message's top-level fields are walked
once; the raw entries become views of the received bytes and protobuf parses only the rest
(a few hundred bytes of names, shapes and parameters). Anything the walk does not understand
goes to protobuf whole, which accepts or refuses it as before. The walk is Python: for a small
message, where the copies cost less than it does, protobuf parses everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from trtserve.protocol import grpc_service_pb2 as pb

# ModelInferRequest.raw_input_contents (grpc_service.proto).
RAW_INPUT_CONTENTS = 7
# Below this size protobuf's copies cost less than walking the fields in Python (about 2 µs
# against 7 µs for a request of two 64-byte tensors).
SPLIT_FROM_BYTES = 64 << 10
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a message this walk can split (protobuf then decides)."""


@dataclass(frozen=True, slots=True)
class InferMessage:
    """A parsed ModelInferRequest and its raw input tensors (for a large message, views of the
    received bytes, no longer in `message`)."""

    message: pb.ModelInferRequest
    raw: tuple[bytes | memoryview, ...]


def parse_infer_request(data: bytes) -> InferMessage:
    """The request in `data`; raises protobuf's DecodeError for bytes that do not parse."""
    if len(data) >= SPLIT_FROM_BYTES:
        try:
            rest, raw = split_raw_inputs(data)
        except WireError:
            pass
        else:
            return InferMessage(pb.ModelInferRequest.FromString(rest), raw)
    message = pb.ModelInferRequest.FromString(data)
    return InferMessage(message, tuple(message.raw_input_contents))


def split_raw_inputs(data: bytes) -> tuple[bytes, tuple[memoryview, ...]]:
    """The message without its raw_input_contents fields, and those fields' payloads in order."""
    view = memoryview(data)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    position, kept_from, end = 0, 0, len(data)
    while position < end:
        field_start = position
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            payload_end = position + length
            if payload_end > end:
                raise WireError("a field runs past the end")
            if number == RAW_INPUT_CONTENTS:
                kept.append(view[kept_from:field_start])
                raw.append(view[position:payload_end])
                kept_from = payload_end
            position = payload_end
        elif wire_type == _VARINT:
            _, position = _varint(data, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        else:
            raise WireError(f"wire type {wire_type}")
    if position != end:
        raise WireError("a field runs past the end")
    if not raw:
        return data, ()
    kept.append(view[kept_from:])
    return b"".join(kept), tuple(raw)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift >= 64:
            break
    raise WireError("a varint runs past the end or is too long")
