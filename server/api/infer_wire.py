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
from trtserve.protocol.wire_fields import LENGTH_DELIMITED, WireError, fields

# ModelInferRequest.raw_input_contents (grpc_service.proto).
RAW_INPUT_CONTENTS = 7
# Below this size protobuf's copies cost less than walking the fields in Python (about 2 µs
# against 7 µs for a request of two 64-byte tensors).
SPLIT_FROM_BYTES = 64 << 10


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
    """The message without its raw_input_contents fields, and those fields' payloads in order.

    WireError when the walk does not understand the bytes (see wire_fields).
    """
    view = memoryview(data)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    kept_from = 0
    for field in fields(data):
        if field.number == RAW_INPUT_CONTENTS and field.wire_type == LENGTH_DELIMITED:
            kept.append(view[kept_from : field.start])
            raw.append(view[field.value : field.end])
            kept_from = field.end
    if not raw:
        return data, ()
    kept.append(view[kept_from:])
    return b"".join(kept), tuple(raw)
