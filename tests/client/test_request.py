"""Request building and response parsing, through real serialized protobuf messages."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from trtserve.client import InferInput, InferRequest
from trtserve.client import request as rq
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol.datatypes import NAMES, from_name
from trtserve.protocol.tensors import fill_contents, from_contents, from_raw, to_raw

TYPED = [n for n in NAMES if from_name(n).contents_field is not None]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values that exercise each datatype's range (negative, large, non-ASCII)."""
    count = int(np.prod(shape))
    dt = from_name(datatype)
    if datatype == "BYTES":
        items = [b"", b"a", "\u00e9t\u00e9".encode(), b"\x00\xff", b"xyz" * 50, b"last"]
        out = np.empty(count, dtype=np.object_)
        out[:] = (items * count)[:count]
        return out.reshape(shape)
    if datatype == "BOOL":
        flags: np.ndarray = np.arange(count) % 3 == 0
        return flags.reshape(shape)
    if datatype == "BF16":
        return np.array([0x3F80, 0xBF80, 0x7F80, 0x0001, 0x4049, 0xFFFF] * count, np.uint16)[
            :count
        ].reshape(shape)
    info = np.finfo(dt.dtype) if dt.dtype.kind == "f" else np.iinfo(dt.dtype)
    ends = [info.min, info.max, 0, 1]
    if dt.dtype.kind != "u":
        ends.append(-1)
    numbers: np.ndarray = np.array((ends * count)[:count], dtype=dt.dtype)
    return numbers.reshape(shape)


def roundtrip(message: pb.ModelInferRequest) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(message.SerializeToString())


def server_decode(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Decode inputs as the server does (the same shared protocol functions)."""
    out = {}
    for i, t in enumerate(request.inputs):
        if request.raw_input_contents:
            out[t.name] = from_raw(t.name, t.datatype, list(t.shape), request.raw_input_contents[i])
        else:
            out[t.name] = from_contents(t.name, t.datatype, list(t.shape), t.contents)
    return out


def echo_response(request: pb.ModelInferRequest, raw: bool) -> pb.ModelInferResponse:
    """A response whose outputs are the request's inputs, raw or typed."""
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    decoded = server_decode(request)
    for t in request.inputs:
        out = response.outputs.add(name=f"OUT_{t.name}", datatype=t.datatype, shape=t.shape)
        if raw:
            response.raw_output_contents.append(to_raw(decoded[t.name], from_name(t.datatype)))
        else:
            fill_contents(out.contents, decoded[t.name], from_name(t.datatype))
    return pb.ModelInferResponse.FromString(response.SerializeToString())


@pytest.mark.parametrize("datatype", NAMES)
def test_raw_round_trip_every_datatype(datatype: str) -> None:
    data = sample(datatype)
    request = roundtrip(rq.build_infer_request("m", [InferInput("x", data, datatype)]))
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == [2, 3]
    assert len(request.raw_input_contents) == 1
    assert not request.inputs[0].HasField("contents")
    np.testing.assert_array_equal(server_decode(request)["x"], data)
    result = rq.parse_infer_response(echo_response(request, raw=True))
    np.testing.assert_array_equal(result.as_numpy("OUT_x"), data)
    assert result.datatypes["OUT_x"] == datatype


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_round_trip(datatype: str) -> None:
    data = sample(datatype)
    request = roundtrip(
        rq.build_infer_request("m", [InferInput("x", data, datatype)], use_typed_contents=True)
    )
    assert len(request.raw_input_contents) == 0
    field = from_name(datatype).contents_field
    assert field is not None
    assert len(getattr(request.inputs[0].contents, field)) == 6
    np.testing.assert_array_equal(server_decode(request)["x"], data)
    result = rq.parse_infer_response(echo_response(request, raw=False))
    assert result.as_numpy("OUT_x").dtype == from_name(datatype).dtype
    np.testing.assert_array_equal(result.as_numpy("OUT_x"), data)


def test_int8_typed_contents_are_widened_to_int32_field() -> None:
    data = np.array([-128, -1, 0, 127], dtype=np.int8)
    request = roundtrip(
        rq.build_infer_request("m", [InferInput("x", data)], use_typed_contents=True)
    )
    assert request.inputs[0].datatype == "INT8"
    assert list(request.inputs[0].contents.int_contents) == [-128, -1, 0, 127]
    decoded = server_decode(request)["x"]
    assert decoded.dtype == np.int8
    np.testing.assert_array_equal(decoded, data)


def test_bytes_raw_uses_4_byte_little_endian_length_prefixes() -> None:
    data = np.array([b"ab", b"", "\u00e9".encode()], dtype=np.object_)
    request = rq.build_infer_request("m", [InferInput("s", data)])
    assert request.inputs[0].datatype == "BYTES"
    expected = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2)
    assert request.raw_input_contents[0] == expected + "\u00e9".encode()


def test_str_array_is_sent_as_utf8_bytes() -> None:
    data = np.array(["h\u00e9", "x"])
    request = roundtrip(rq.build_infer_request("m", [InferInput("s", data)]))
    assert list(server_decode(request)["s"]) == ["h\u00e9".encode(), b"x"]


def test_fp16_is_little_endian_raw() -> None:
    data = np.array([1.0, -2.5], dtype=np.float16)
    request = rq.build_infer_request("m", [InferInput("h", data)])
    assert request.inputs[0].datatype == "FP16"
    assert request.raw_input_contents[0] == data.astype("<f2").tobytes()


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_typed_contents_refuse_raw_only_datatypes(datatype: str) -> None:
    with pytest.raises(ValueError, match=f"input 'h': datatype {datatype} has no typed"):
        rq.build_infer_request(
            "m", [InferInput("h", sample(datatype), datatype)], use_typed_contents=True
        )


def test_bf16_from_float32_rounds_to_nearest_even() -> None:
    values = np.array(
        [1.0, -2.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, np.inf, np.nan, 3.140625], np.float32
    )
    patterns = rq.float32_to_bf16(values)
    # 1 + 2^-8 is halfway between 1.0 and 1 + 2^-7: ties go to the even pattern 0x3F80.
    assert patterns.tolist()[:5] == [0x3F80, 0xC000, 0x3F80, 0x3F82, 0x7F80]
    assert np.isnan(rq.bf16_to_float32(patterns)[5])
    assert rq.bf16_to_float32(patterns)[6] == np.float32(3.140625)
    request = rq.build_infer_request("m", [InferInput("b", values[:2], "BF16")])
    assert request.raw_input_contents[0] == np.array([0x3F80, 0xC000], "<u2").tobytes()


def test_explicit_datatype_casts_within_kind_and_refuses_across() -> None:
    request = rq.build_infer_request("m", [InferInput("x", np.array([1.5]), "FP32")])
    assert request.raw_input_contents[0] == np.array([1.5], "<f4").tobytes()
    with pytest.raises(ValueError, match="input 'x': datatype INT32 needs dtype int32"):
        rq.build_infer_request("m", [InferInput("x", np.array([1.5]), "INT32")])
    with pytest.raises(ValueError, match="input 'x': BYTES needs"):
        rq.build_infer_request("m", [InferInput("x", np.array([1]), "BYTES")])


def test_request_fields_and_requested_outputs() -> None:
    request = roundtrip(
        rq.build_infer_request(
            "simple",
            [InferInput("A", np.zeros((1, 16), np.float32))],
            ["OUTPUT1"],
            version="2",
            request_id="r-7",
        )
    )
    assert (request.model_name, request.model_version, request.id) == ("simple", "2", "r-7")
    assert [o.name for o in request.outputs] == ["OUTPUT1"]
    assert (
        rq.build_request_message(
            InferRequest("simple", [InferInput("A", np.zeros(2, np.float32))], version="3")
        ).model_version
        == "3"
    )


def test_scalar_and_empty_tensors() -> None:
    for data in (np.array(7, np.int64), np.zeros((0, 4), np.float32)):
        request = roundtrip(rq.build_infer_request("m", [InferInput("x", data)]))
        assert list(request.inputs[0].shape) == list(data.shape)
        result = rq.parse_infer_response(echo_response(request, raw=True))
        np.testing.assert_array_equal(result.as_numpy("OUT_x"), data)
        assert result.as_numpy("OUT_x").shape == data.shape


def test_response_with_wrong_raw_count_is_refused() -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="a", datatype="FP32", shape=[1])
    response.outputs.add(name="b", datatype="FP32", shape=[1])
    response.raw_output_contents.append(b"\0\0\0\0")
    with pytest.raises(ValueError, match="expected 2, received 1"):
        rq.parse_infer_response(response)


def test_as_numpy_names_available_outputs() -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="a", datatype="INT32", shape=[1])
    response.raw_output_contents.append(b"\1\0\0\0")
    result = rq.parse_infer_response(response)
    assert result.as_numpy("a").tolist() == [1]
    with pytest.raises(KeyError, match=r"output 'z' .* received \['a'\]"):
        result.as_numpy("z")


def test_load_request_parameters_like_tritonclient() -> None:
    request = pb.RepositoryModelLoadRequest.FromString(
        rq.build_load_request(
            "m", config='{"max_batch_size": 4}', files={"1/model.onnx": b"\x08\x07"}
        ).SerializeToString()
    )
    assert request.model_name == "m"
    assert request.parameters["config"].string_param == '{"max_batch_size": 4}'
    assert request.parameters["file:1/model.onnx"].bytes_param == b"\x08\x07"
    assert set(rq.build_load_request("m").parameters) == set()


def test_upload_stream_header_then_chunks(tmp_path: object) -> None:
    data = bytes(range(256)) * 41  # 10496 bytes: 2 full chunks and a partial one
    seen: list[tuple[int, int]] = []
    for source in (data, _write(tmp_path, data)):
        seen.clear()
        messages = list(
            rq.upload_requests(
                "plan",
                rq.UploadSource.open(source),
                version=3,
                filename="model.plan",
                config_json="{}",
                chunk_bytes=4096,
                progress=lambda sent, total: seen.append((sent, total)),
            )
        )
        messages = [tpb.UploadRequest.FromString(m.SerializeToString()) for m in messages]
        header = messages[0].header
        assert messages[0].WhichOneof("part") == "header"
        assert (header.model_name, header.version, header.filename) == ("plan", 3, "model.plan")
        assert header.total_bytes == len(data)
        assert header.sha256 == hashlib.sha256(data).hexdigest()
        assert header.config_json == "{}"
        assert [m.WhichOneof("part") for m in messages[1:]] == ["data"] * 3
        assert b"".join(m.data for m in messages[1:]) == data
        assert seen == [(4096, len(data)), (8192, len(data)), (len(data), len(data))]


def _write(tmp_path: object, data: bytes) -> str:
    path = f"{tmp_path}/model.plan"
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_statistics_and_metadata_parsing() -> None:
    response = pb.ModelStatisticsResponse()
    s = response.model_stats.add(name="m", version="1", inference_count=10, execution_count=4)
    s.inference_stats.success.count = 10
    s.inference_stats.success.ns = 20_000_000
    s.batch_stats.add(batch_size=4).compute_infer.count = 2
    (stats,) = rq.parse_statistics(
        pb.ModelStatisticsResponse.FromString(response.SerializeToString())
    )
    assert (stats.name, stats.inference_count, stats.execution_count) == ("m", 10, 4)
    assert stats.success.mean_ms == 2.0
    assert stats.fail.mean_ms == 0.0
    assert stats.batch_stats[0].batch_size == 4
    assert stats.batch_stats[0].compute_infer.count == 2

    meta = pb.ModelMetadataResponse(name="m", versions=["1"], platform="onnxruntime_onnx")
    meta.inputs.add(name="X", datatype="FP32", shape=[-1, 16])
    parsed = rq.parse_model_metadata(meta)
    assert parsed.inputs[0].shape == (-1, 16)
    assert parsed.versions == ("1",)


def test_random_inputs_follow_metadata() -> None:
    meta = pb.ModelMetadataResponse(name="m")
    meta.inputs.add(name="A", datatype="BF16", shape=[-1, 3, -1])
    meta.inputs.add(name="B", datatype="BYTES", shape=[2])
    meta.inputs.add(name="C", datatype="INT8", shape=[-1, 4])
    given = {"C": np.ones((5, 4), np.int8)}
    inputs = rq.random_inputs(rq.parse_model_metadata(meta), batch=6, max_batch_size=8, given=given)
    by_name = {i.name: i for i in inputs}
    assert by_name["A"].data.shape == (6, 3, 1)
    assert by_name["A"].data.dtype == np.uint16
    assert by_name["B"].data.shape == (6,)  # dimension 0 is the batch when batching
    assert by_name["C"].data is given["C"]
    unbatched = rq.random_inputs(rq.parse_model_metadata(meta), batch=6, max_batch_size=0)
    assert {i.name: i.data.shape for i in unbatched} == {"A": (1, 3, 1), "B": (2,), "C": (1, 4)}
    request = roundtrip(rq.build_infer_request("m", inputs))
    assert [t.datatype for t in request.inputs] == ["BF16", "BYTES", "INT8"]
