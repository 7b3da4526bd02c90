"""The REST port as a server: its body limit, turning it off, JSON replies of every kind."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rest_calls import call
from server_process import ServerProcess, start_server

from trtserve.server.default_model import build_simple_model, write_default_repository

WIDTH = 16


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose bodies may hold 1 MiB."""
    root = tmp_path_factory.mktemp("rest-limited")
    write_default_repository(root)
    proc = start_server(["--repository", str(root), "--max-message-mb", "1"])
    yield proc
    assert proc.terminate() == 0


def test_a_body_over_the_limit_is_refused_naming_the_setting(limited: ServerProcess) -> None:
    rows = 8
    big = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [rows, WIDTH]}]}
    body = json.dumps(big).encode() + b" " * (2 << 20)
    answer = call(limited.http_address, "POST", "/v2/models/simple/infer", body)
    assert answer.status == 413, answer.body
    assert "max_message_mb" in answer.error and str(1 << 20) in answer.error, answer.error
    assert call(limited.http_address, "GET", "/v2/health/ready").status == 200


def test_a_load_s_files_count_against_the_upload_limits(limited: ServerProcess) -> None:
    config = json.dumps({"name": "copy", "platform": "onnxruntime_onnx", "max_batch_size": 8})
    model = base64.encodebytes(build_simple_model()).decode()  # lines of 76, as MIME writes
    body = {"parameters": {"config": config, "file:1/model.onnx": model}}
    assert call(limited.http_address, "POST", "/v2/repository/models/copy/load", body).status == 200
    assert call(limited.http_address, "GET", "/v2/models/copy/ready").status == 200


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"config": 7}, ("'config'", "JSON string", "7")),
        ({"config": "{}", "file:1/model.onnx": "not base64!"}, ("file:1/model.onnx", "base64")),
        ({"colour": "red"}, ("unknown load parameter 'colour'",)),
        ({"config": "{}", "file:../escape/model.onnx": "AAAA"}, ("../escape/model.onnx",)),
        ({"config": '{"max_batch_sise": 1}'}, ("max_batch_sise", "max_batch_size")),
    ],
)
def test_bad_load_parameters_are_refused_naming_them(
    limited: ServerProcess, parameters: dict[str, object], words: tuple[str, ...]
) -> None:
    body = {"parameters": parameters}
    answer = call(limited.http_address, "POST", "/v2/repository/models/other/load", body)
    assert answer.status == 400, answer.body
    for word in words:
        assert word in answer.error, (word, answer.error)


def test_register_bodies_are_checked_naming_the_field(limited: ServerProcess) -> None:
    path = "/v2/systemsharedmemory/region/r/register"
    for body, words in (
        ({"key": "/x"}, ("'byte_size'", "integer", "none")),
        ({"byte_size": 64}, ("'key'", "string", "none")),
        ({"key": "/x", "byte_size": "64"}, ("'byte_size'", "integer", "string")),
    ):
        answer = call(limited.http_address, "POST", path, body)
        assert answer.status == 400, answer.body
        for word in words:
            assert word in answer.error, (word, answer.error)
    body = {"byte_size": 64, "device_id": 0}
    cuda = call(limited.http_address, "POST", "/v2/cudasharedmemory/region/g/register", body)
    assert cuda.status == 400 and "raw_handle" in cuda.error, cuda.body
    # perf_analyzer's base64 (libb64) breaks lines every 72 characters: read past them, as
    # Triton does; this server then refuses the handle for want of a GPU, not its encoding.
    encoded = base64.b64encode(bytes(range(64))).decode()
    body["raw_handle"] = {"b64": encoded[:72] + "\n" + encoded[72:] + "\n"}
    cuda = call(limited.http_address, "POST", "/v2/cudasharedmemory/region/g/register", body)
    assert cuda.status == 400 and "base64" not in cuda.error, cuda.error


def test_plain_json_as_curl_sends_it(limited: ServerProcess) -> None:
    """No binary data, nested `data`, no outputs named: every output comes back as JSON."""
    a = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
    body = {
        "id": "curl-1",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [2, WIDTH], "data": a.tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": [2, WIDTH], "data": a.ravel().tolist()},
        ],
    }
    answer = call(limited.http_address, "POST", "/v2/models/simple/infer", body)
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in answer.headers
    reply = answer.json()
    assert (reply["id"], reply["model_name"], reply["model_version"]) == ("curl-1", "simple", "1")
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["OUTPUT0"]["shape"] == [2, WIDTH]
    assert outputs["OUTPUT0"]["data"] == (2 * a).ravel().tolist()
    assert outputs["OUTPUT1"]["data"] == [0.0] * (2 * WIDTH)
    assert all("parameters" not in o for o in reply["outputs"])


def test_binary_output_layout(limited: ServerProcess) -> None:
    """binary_data_output: the JSON, then each output's bytes in order, sized in its parameters."""
    a = np.ones((1, WIDTH), np.float32)
    inputs = [
        {"name": n, "datatype": "FP32", "shape": [1, WIDTH], "data": a.ravel().tolist()}
        for n in ("INPUT0", "INPUT1")
    ]
    body = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    answer = call(limited.http_address, "POST", "/v2/models/simple/infer", body)
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    reply = json.loads(answer.body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in reply["outputs"]]
    assert sizes == [4 * WIDTH, 4 * WIDTH] and len(answer.body) == length + sum(sizes)
    first = np.frombuffer(answer.body[length : length + sizes[0]], np.float32)
    np.testing.assert_array_equal(first, 2 * a.ravel())


def test_the_rest_port_can_be_turned_off(tmp_path: Path) -> None:
    proc = start_server(["--http-port", "-1", "--metrics-port", "-1"])
    try:
        assert proc.http_port == -1
        assert any("HTTP off" in line for line in proc.output)
    finally:
        assert proc.terminate() == 0
