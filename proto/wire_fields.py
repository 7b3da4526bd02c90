"""The top-level fields of a serialized protobuf message, walked without parsing it.

For readers that want some fields' bytes where they lie in the message (a view, not the copy
protobuf makes): packed tensor contents, the raw tensors of an inference request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_FIXED = {FIXED64: 8, FIXED32: 4}


class WireError(ValueError):
    """Bytes this walk does not understand: truncated, a group, or a field number 0."""


@dataclass(frozen=True, slots=True)
class WireField:
    """One field: its number and wire type, and where it starts, its value starts and it ends.

    For a length-delimited field the value is its payload, after the length.
    """

    number: int
    wire_type: int
    start: int
    value: int
    end: int


def fields(data: bytes | memoryview) -> Iterator[WireField]:
    """Each top-level field of the message in `data`, in order; WireError past the first bad one."""
    position, end = 0, len(data)
    while position < end:
        start = position
        key, position = read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {start}")
        value = position
        if wire_type == LENGTH_DELIMITED:
            length, value = read_varint(data, position)
            position = value + length
        elif wire_type == VARINT:
            _, position = read_varint(data, position)
        elif wire_type in _FIXED:
            position += _FIXED[wire_type]
        else:
            raise WireError(f"wire type {wire_type} (a group) at byte {start}")
        if position > end:
            raise WireError(f"field {number} at byte {start} runs past the end ({end} bytes)")
        yield WireField(number, wire_type, start, value, position)


def read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it; WireError if cut or over 10 bytes."""
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift >= 70:
            break
    raise WireError(f"a varint at byte {position} is cut off or longer than 10 bytes")
