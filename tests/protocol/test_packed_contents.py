"""fp32/fp64 typed contents read from their packed wire form, against reading value by value."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import tensors
from trtserve.protocol.packed_contents import packed_values

FP32 = st.floats(width=32, allow_nan=False)
FP64 = st.floats(allow_nan=False)


def unpacked(field_number: int, wire_type: int, values: bytes, width: int) -> bytes:
    """Each value as its own field entry, as a proto2-style sender may write them."""
    key = bytes([(field_number << 3) | wire_type])
    return b"".join(key + values[i : i + width] for i in range(0, len(values), width))


@settings(max_examples=200, deadline=None)
@given(
    fp32=st.lists(FP32, max_size=30),
    fp64=st.lists(FP64, max_size=30),
    ints=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5),
    other=st.lists(st.binary(max_size=5), max_size=3),
)
def test_packed_values_equal_the_field_read_value_by_value(
    fp32: list[float], fp64: list[float], ints: list[int], other: list[bytes]
) -> None:
    # Other fields around the one read must be skipped, whatever their wire type.
    contents = pb.InferTensorContents(
        fp32_contents=fp32, fp64_contents=fp64, int_contents=ints, bytes_contents=other
    )
    for field, dtype in (("fp32_contents", np.float32), ("fp64_contents", np.float64)):
        read = packed_values(contents, field)
        assert read is not None
        expected = np.asarray(getattr(contents, field), dtype=dtype)
        assert read.dtype == expected.dtype
        np.testing.assert_array_equal(read, expected)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(FP32, min_size=1, max_size=20))
def test_values_sent_unpacked_decode_like_packed_ones(values: list[float]) -> None:
    raw = np.asarray(values, dtype="<f4").tobytes()
    # fp32_contents is field 6; wire type 5 is a 32-bit value.
    contents = pb.InferTensorContents.FromString(unpacked(6, 5, raw, 4))
    decoded = tensors.from_contents("x", "FP32", [len(values)], contents)
    np.testing.assert_array_equal(decoded, np.asarray(values, dtype=np.float32))


def test_typed_fp64_contents_decode_to_the_shape() -> None:
    values = np.linspace(-1.0, 1.0, 24)
    contents = pb.InferTensorContents(fp64_contents=values.tolist())
    decoded = tensors.from_contents("x", "FP64", [2, 3, 4], contents)
    assert decoded.dtype == np.float64
    np.testing.assert_array_equal(decoded, values.reshape(2, 3, 4))


def test_a_group_among_the_fields_falls_back_to_reading_value_by_value() -> None:
    # An unknown field 15 holding an (empty) group: wire types 3 and 4.
    contents = pb.InferTensorContents.FromString(
        pb.InferTensorContents(fp32_contents=[1.5, 2.5]).SerializeToString() + b"\x7b\x7c"
    )
    assert packed_values(contents, "fp32_contents") is None
    decoded = tensors.from_contents("x", "FP32", [2], contents)
    np.testing.assert_array_equal(decoded, np.array([1.5, 2.5], dtype=np.float32))
