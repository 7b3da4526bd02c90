"""Numpy arrays to and from v2 protocol tensor data (raw bytes or typed contents).

Both sides use these functions, so the server decodes exactly what the client encodes.
Failures raise TensorDataError with a message that names the tensor, the expected and the
received value; the server turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from math import prod

import numpy as np

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol.bytes_elements import BytesDataError, join_elements, split_elements
from trtserve.protocol.datatypes import Datatype, from_name
from trtserve.protocol.packed_contents import FIXED_WIDTH, packed_values


class TensorDataError(ValueError):
    """Tensor data that does not match its declared datatype or shape."""


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a shape (1 for a scalar shape `[]`)."""
    return prod(map(int, shape))


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor to its raw form: each element as a 4-byte little-endian length + bytes."""
    return join_elements(array)


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """Raw BYTES tensor data to a flat object array of `count` bytes elements."""
    try:
        return split_elements(name, raw, count)
    except BytesDataError as error:
        raise TensorDataError(str(error)) from None


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """Decode raw tensor bytes; numeric data is a zero-copy, read-only view of `raw`.

    Unless `raw` is not aligned for the datatype (a view into a received message may start
    anywhere): then it is copied once, since libraries that read the array may expect
    aligned data.
    """
    dt = from_name(datatype)
    count = element_count(shape)
    if dt.name == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(tuple(shape))
    expected = count * dt.dtype.itemsize
    if len(raw) != expected:
        raise TensorDataError(
            f"input '{name}': raw data of {datatype} shape {list(shape)} must be "
            f"{expected} bytes, received {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dt.dtype).reshape(tuple(shape))
    return array if array.flags.aligned else array.copy()


def from_contents(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents
) -> np.ndarray:
    """Decode typed tensor contents (the field that matches the datatype)."""
    dt = from_name(datatype)
    if dt.contents_field is None:
        raise TensorDataError(
            f"input '{name}': datatype {datatype} has no typed contents field; "
            "send it in raw_input_contents"
        )
    values = getattr(contents, dt.contents_field)
    count = element_count(shape)
    if len(values) != count:
        raise TensorDataError(
            f"input '{name}': {dt.contents_field} must hold {count} values for shape "
            f"{list(shape)}, received {len(values)}"
        )
    if dt.name == "BYTES":
        return np.fromiter(values, dtype=np.object_, count=count).reshape(tuple(shape))
    packed = (
        packed_values(contents, dt.contents_field) if dt.contents_field in FIXED_WIDTH else None
    )
    if packed is not None:
        # Fixed-width values are the tensor's own type: no range to check.
        return packed.astype(dt.dtype, copy=False).reshape(tuple(shape))
    wide = np.asarray(values, dtype=dt.contents_dtype)
    narrow = wide.astype(dt.dtype)
    if dt.contents_dtype != dt.dtype and not np.array_equal(narrow, wide):
        raise TensorDataError(
            f"input '{name}': {dt.contents_field} has values outside the range of {datatype}"
        )
    return narrow.reshape(tuple(shape))


_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


def raw_view(array: np.ndarray, datatype: Datatype | None = None) -> memoryview:
    """The raw tensor bytes of an array (C order, little-endian), copied only when needed.

    Large outputs are copied once, into the serialized message, instead of once per step.
    """
    kind = array.dtype.kind
    if kind in "OSU":
        return memoryview(serialize_bytes(array))
    if datatype is not None and datatype.name == "BF16":
        array = np.ascontiguousarray(array, dtype=np.uint16)
    if array.size == 0:
        return memoryview(b"")
    # Most outputs are native little-endian and contiguous already: no conversion, no copy.
    if array.flags.c_contiguous and array.dtype.byteorder in "=<|" and _LITTLE_ENDIAN_HOST:
        return array.data.cast("B")
    little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return little.data.cast("B")


def to_raw(array: np.ndarray, datatype: Datatype | None = None) -> bytes:
    """Encode an array as raw tensor bytes (C order, little-endian)."""
    return raw_view(array, datatype).tobytes()


def fill_contents(contents: pb.InferTensorContents, array: np.ndarray, datatype: Datatype) -> None:
    """Write an array into the typed contents field of its datatype."""
    if datatype.contents_field is None:
        raise TensorDataError(f"datatype {datatype.name} can only travel as raw bytes")
    field = getattr(contents, datatype.contents_field)
    flat = array.reshape(-1)
    if datatype.name == "BYTES":
        field.extend(x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in flat)
    else:
        field.extend(flat.astype(datatype.contents_dtype).tolist())
