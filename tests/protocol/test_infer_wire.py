"""Inference requests parsed with their raw tensors left in the received bytes: the same
message protobuf reads, the same tensors, in order, for any request; bad bytes still refused."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import tensors
from trtserve.server.api import infer_wire
from trtserve.server.api.infer_wire import parse_infer_request, split_raw_inputs

names = st.text(min_size=0, max_size=12)


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(names), model_version=draw(st.sampled_from(["", "1", "12"])), id=draw(names)
    )
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(names), datatype="FP32")
        tensor.shape.extend(draw(st.lists(st.integers(0, 1 << 40), max_size=4)))
        tensor.parameters["p"].int64_param = draw(st.integers(-(1 << 63), (1 << 63) - 1))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(names))
    request.parameters["priority"].uint64_param = draw(st.integers(0, (1 << 64) - 1))
    request.parameters["flag"].bool_param = draw(st.booleans())
    request.parameters["ratio"].double_param = draw(st.floats(allow_nan=False))
    for raw in draw(st.lists(st.binary(max_size=300), max_size=4)):
        request.raw_input_contents.append(raw)
    return request


@pytest.fixture(autouse=True)
def split_every_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk runs on large messages only; here on every one, to test it on many."""
    monkeypatch.setattr(infer_wire, "SPLIT_FROM_BYTES", 0)


@settings(max_examples=300, deadline=None)
@given(requests(), st.data())
def test_the_same_message_and_tensors_as_protobuf_reads(
    request: pb.ModelInferRequest, data: st.DataObject
) -> None:
    wire = request.SerializeToString()
    # Fields may come in any order on the wire: move the raw ones among the others.
    if data.draw(st.booleans()):
        raw_only = pb.ModelInferRequest(raw_input_contents=request.raw_input_contents)
        rest = pb.ModelInferRequest()
        rest.CopyFrom(request)
        del rest.raw_input_contents[:]
        wire = raw_only.SerializeToString() + rest.SerializeToString()
    parsed = parse_infer_request(wire)
    assert [bytes(r) for r in parsed.raw] == list(request.raw_input_contents)
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert parsed.message == expected
    assert not parsed.message.raw_input_contents


def test_a_large_request_is_split_and_a_small_one_parsed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(infer_wire, "SPLIT_FROM_BYTES", 1000)
    small = pb.ModelInferRequest(model_name="m", raw_input_contents=[bytes(10)])
    large = pb.ModelInferRequest(model_name="m", raw_input_contents=[bytes(2000)])
    whole = parse_infer_request(small.SerializeToString())
    assert whole.message == small and whole.raw == (bytes(10),)
    split = parse_infer_request(large.SerializeToString())
    assert not split.message.raw_input_contents and isinstance(split.raw[0], memoryview)


def test_the_tensors_are_views_of_the_received_bytes() -> None:
    payload = np.arange(4096, dtype=np.float32).tobytes()
    wire = pb.ModelInferRequest(model_name="m", raw_input_contents=[payload]).SerializeToString()
    rest, raw = split_raw_inputs(wire)
    assert raw[0].obj is wire and bytes(raw[0]) == payload
    assert pb.ModelInferRequest.FromString(rest).model_name == "m"


def test_unknown_fields_are_left_to_protobuf() -> None:
    # Field 99 (varint), field 98 (fixed64), field 97 (fixed32): kept, not dropped.
    extra = bytes([0x98, 0x06, 0x05, 0x91, 0x06]) + bytes(8) + bytes([0x8D, 0x06]) + bytes(4)
    wire = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"ab"]).SerializeToString()
    parsed = parse_infer_request(wire + extra)
    assert parsed.message.model_name == "m" and [bytes(r) for r in parsed.raw] == [b"ab"]
    assert parsed.message.SerializeToString().endswith(extra)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x0a\x05ab",  # a name longer than the bytes left
        b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a length varint that never ends
        b"\x0b",  # a group start: not in proto3 messages
    ],
)
def test_bytes_that_do_not_parse_are_refused(wire: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_infer_request(wire)


def test_unaligned_raw_data_is_copied_aligned_and_aligned_data_is_not() -> None:
    values = np.arange(8, dtype=np.float32)
    buffer = b"\x00" + values.tobytes()
    unaligned = tensors.from_raw("x", "FP32", [8], memoryview(buffer)[1:])
    assert unaligned.flags.aligned and unaligned.tolist() == values.tolist()
    aligned_source = values.tobytes()
    aligned = tensors.from_raw("x", "FP32", [8], memoryview(aligned_source))
    assert np.shares_memory(aligned, np.frombuffer(aligned_source, dtype=np.uint8))
