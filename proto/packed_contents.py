"""Fixed-width typed contents (fp32_contents, fp64_contents) read as one array, not per value.

Reading a repeated float field from the message builds a Python float per value (1.25 s for
12 M values). The field's serialized form is one packed run of little-endian values, so the
contents message is serialized (a copy in C) and the run is viewed by numpy where it lies.
"""

from __future__ import annotations

import numpy as np

from trtserve.protocol import grpc_service_pb2 as pb

# The fields whose values have a fixed width on the wire, and that width's numpy type.
FIXED_WIDTH: dict[str, np.dtype] = {
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}
_NUMBERS = {
    name: pb.InferTensorContents.DESCRIPTOR.fields_by_name[name].number for name in FIXED_WIDTH
}
_LENGTH_DELIMITED = 2
# Wire types 0 (varint), 1 (64-bit), 5 (32-bit): bytes to skip, None for a varint.
_FIXED_SKIP = {1: 8, 5: 4}


def packed_values(contents: pb.InferTensorContents, field: str) -> np.ndarray | None:
    """The values of a fixed-width field of `contents`, as a read-only array.

    None when the message holds something this reader does not walk (a group, kept as an
    unknown field): the caller reads the field value by value instead.
    """
    dtype = FIXED_WIDTH[field]
    data = contents.SerializeToString()
    number = _NUMBERS[field]
    runs: list[np.ndarray] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire_type = key & 7
        if wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            if key >> 3 == number:
                runs.append(np.frombuffer(data, dtype, length // dtype.itemsize, position))
            position += length
        elif wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type in _FIXED_SKIP:
            position += _FIXED_SKIP[wire_type]
        else:
            return None
    if len(runs) == 1:
        return runs[0]
    return np.concatenate(runs) if runs else np.empty(0, dtype)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
