"""REST JSON read into v2 messages and written back, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import tensors
from trtserve.server.errors import InvalidArgument
from trtserve.server.rest.infer_json import json_data, read_request, split_body
from trtserve.server.rest.json_messages import as_json


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT8", [[-128, 127]], np.array([-128, 127], np.int8)),
        ("UINT16", [0, 65535], np.array([0, 65535], np.uint16)),
        ("INT64", [2**62, -(2**62)], np.array([2**62, -(2**62)], np.int64)),
        ("FP64", [1, 2.5], np.array([1.0, 2.5], np.float64)),
        ("FP16", [0.5, -2], np.array([0.5, -2.0], np.float16)),
        ("BOOL", [True, False], np.array([True, False])),
    ],
)
def test_json_numbers_become_raw_tensor_bytes(
    datatype: str, data: list[object], expected: np.ndarray
) -> None:
    assert json_data("x", datatype, [2], data) == expected.tobytes()


def test_bf16_is_rounded_to_nearest_even() -> None:
    raw = json_data("x", "BF16", [3], [1.0, 1.00390625, -3.5])
    bits = np.frombuffer(raw, np.uint16)
    # 1.00390625 lies halfway between 1.0 and 1.0078125: it rounds to the even one, 1.0.
    assert bits.tolist() == [0x3F80, 0x3F80, 0xC060]


def test_bytes_elements_nested_as_the_shape() -> None:
    raw = json_data("x", "BYTES", [2, 2], [["a", "bé"], ["", "cc"]])
    decoded = tensors.from_raw("x", "BYTES", [4], raw)
    assert [bytes(e) for e in decoded] == [b"a", "bé".encode(), b"", b"cc"]


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("INT8", [1, 200], ("-128 to 127", "received 200")),
        ("UINT8", [-1, 2], ("0 to 255", "received -1")),
        ("INT32", [1.5, 2], ("integers", "INT32", "numbers with a fraction")),
        ("BOOL", [1, 0], ("true or false", "BOOL", "integers")),
        ("BYTES", ["a", 1], ("strings", "BYTES", "number")),
        ("FP32", [1, 2, 3], ("2 elements", "received 3")),
        ("FP32", [[1], [2, 3]], ("ragged",)),
        ("COMPLEX", [1, 2], ("'datatype'", "COMPLEX", "FP32")),
    ],
)
def test_json_data_a_datatype_cannot_hold_is_refused(
    datatype: str, data: list[object], words: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        json_data("x", datatype, [2], data)
    assert "input 'x'" in str(refused.value)
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))


def test_binary_inputs_are_views_of_the_body_in_order() -> None:
    document = {
        "id": "7",
        "inputs": [
            {"name": "a", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
            {"name": "b", "datatype": "UINT8", "shape": [2], "data": [9, 8]},
            {"name": "c", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": 1}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}],
        "parameters": {"binary_data_output": True, "priority": 3},
    }
    text = json.dumps(document).encode()
    request = read_request(*split_body(text + b"\x01\x02\x03\x04", str(len(text))), "m", "2", 1000)
    assert (request.message.model_name, request.message.model_version) == ("m", "2")
    assert request.message.id == "7"
    assert [bytes(r) for r in request.raw] == [b"\x01\x02\x03", b"\x09\x08", b"\x04"]
    assert isinstance(request.raw[0], memoryview)
    assert request.message.parameters["priority"].int64_param == 3
    assert [o.name for o in request.message.outputs] == ["y", "z"]
    assert not request.wants_binary("y") and request.wants_binary("z")


def test_shared_memory_parameters_travel_as_v2_parameters() -> None:
    parameters = {
        "shared_memory_region": "r",
        "shared_memory_offset": 8,
        "shared_memory_byte_size": 64,
    }
    body = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [16], "parameters": parameters}],
    }
    request = read_request(*split_body(json.dumps(body).encode(), None), "m", "", 1000)
    params = request.message.inputs[0].parameters
    assert params["shared_memory_region"].string_param == "r"
    assert params["shared_memory_byte_size"].int64_param == 64
    assert request.raw == []


def test_split_body_without_the_header_is_all_json() -> None:
    text, binary = split_body(b'{"a": 1}', None)
    assert (bytes(text), bytes(binary)) == (b'{"a": 1}', b"")


def test_statistics_json_has_numbers_and_the_config_json_has_numbers_too() -> None:
    reply = pb.ModelStatisticsResponse()
    stats = reply.model_stats.add(name="m", version="1", inference_count=2**40)
    stats.inference_stats.success.count = 3
    stats.batch_stats.add(batch_size=4)
    written = as_json(reply)
    assert written["model_stats"][0]["inference_count"] == 2**40
    assert written["model_stats"][0]["version"] == "1"
    assert written["model_stats"][0]["inference_stats"]["success"] == {"count": 3, "ns": 0}
    assert written["model_stats"][0]["batch_stats"][0]["batch_size"] == 4
    metadata = pb.ModelMetadataResponse(name="m")
    metadata.inputs.add(name="x", datatype="FP32", shape=[-1, 16])
    assert as_json(metadata)["inputs"][0]["shape"] == [-1, 16]
