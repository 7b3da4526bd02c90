"""Fixed-width typed contents (fp32_contents, fp64_contents) read as one array, not per value.

Reading a repeated float field from the message builds a Python float per value (1.25 s for
12 M values). The field's serialized form is one packed run of little-endian values, so the
contents message is serialized (a copy in C) and the run is viewed by numpy where it lies.
"""

from __future__ import annotations

import numpy as np

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol.wire_fields import LENGTH_DELIMITED, WireError, fields

# The fields whose values have a fixed width on the wire, and that width's numpy type.
FIXED_WIDTH: dict[str, np.dtype] = {
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}
_NUMBERS = {
    name: pb.InferTensorContents.DESCRIPTOR.fields_by_name[name].number for name in FIXED_WIDTH
}


def packed_values(contents: pb.InferTensorContents, field: str) -> np.ndarray | None:
    """The values of a fixed-width field of `contents`, as a read-only array.

    None when the message holds something this reader does not walk (a group, kept as an
    unknown field): the caller reads the field value by value instead.
    """
    dtype = FIXED_WIDTH[field]
    data = contents.SerializeToString()
    number = _NUMBERS[field]
    runs: list[np.ndarray] = []
    try:
        for found in fields(data):
            if found.number == number and found.wire_type == LENGTH_DELIMITED:
                count = (found.end - found.value) // dtype.itemsize
                runs.append(np.frombuffer(data, dtype, count, found.value))
    except WireError:
        return None
    if len(runs) == 1:
        return runs[0]
    return np.concatenate(runs) if runs else np.empty(0, dtype)
