"""Tensor encoding shared by client and server: raw bytes, typed contents, BYTES framing."""

from __future__ import annotations

import numpy as np
import pytest

from trtserve.protocol import datatypes, tensors
from trtserve.protocol import grpc_service_pb2 as pb


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
    ],
)
def test_numeric_raw_round_trip_is_exact(dtype: type) -> None:
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    datatype = datatypes.from_numpy(array.dtype)
    decoded = tensors.from_raw("x", datatype.name, [2, 3, 4], tensors.to_raw(array, datatype))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_raw_decoding_is_zero_copy() -> None:
    raw = np.arange(16, dtype=np.float32).tobytes()
    decoded = tensors.from_raw("x", "FP32", [1, 16], raw)
    assert not decoded.flags.owndata and not decoded.flags.writeable


def test_raw_size_mismatch_names_tensor_and_sizes() -> None:
    with pytest.raises(tensors.TensorDataError, match=r"input 'x'.*must be 64 bytes, received 60"):
        tensors.from_raw("x", "FP32", [1, 16], b"\0" * 60)


def test_bytes_framing_round_trip() -> None:
    array = np.array([b"", b"a", "h\u00e9llo".encode(), b"\0" * 300], dtype=np.object_)
    raw = tensors.serialize_bytes(array)
    assert raw[:4] == b"\0\0\0\0" and raw[4:8] == b"\1\0\0\0"
    decoded = tensors.from_raw("s", "BYTES", [4], raw)
    assert list(decoded) == list(array)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\0\0\0ab", "declares 5 bytes, only 2 remain"),
        (b"\x01\0\0\0a", "fewer elements than its shape needs: expected 2, received 1"),
        (b"\x01\0\0\0a\x01\0\0\0bEXTRA", "5 bytes after the 2 elements"),
    ],
)
def test_malformed_bytes_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(tensors.TensorDataError, match=message):
        tensors.from_raw("s", "BYTES", [2], raw)


def test_typed_contents_round_trip_and_range_check() -> None:
    contents = pb.InferTensorContents()
    array = np.array([[-128, 0, 127]], dtype=np.int8)
    tensors.fill_contents(contents, array, datatypes.from_name("INT8"))
    np.testing.assert_array_equal(tensors.from_contents("x", "INT8", [1, 3], contents), array)
    contents.int_contents.append(1000)
    with pytest.raises(tensors.TensorDataError, match="must hold 3 values"):
        tensors.from_contents("x", "INT8", [1, 3], contents)
    with pytest.raises(tensors.TensorDataError, match="outside the range of INT8"):
        tensors.from_contents("x", "INT8", [1, 4], contents)


def test_fp16_has_no_typed_field() -> None:
    with pytest.raises(tensors.TensorDataError, match="send it in raw_input_contents"):
        tensors.from_contents("h", "FP16", [1], pb.InferTensorContents())


def test_unknown_datatype_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown datatype 'FP8'; expected one of BOOL"):
        datatypes.from_name("FP8")
