"""Bad input over REST: each gets Triton's HTTP status and a message naming what was wrong.

The cases of the gRPC bad-input tests (tests/e2e/test_bad_input.py), sent as tritonclient.http
and curl send them (binary tensor data, JSON data), and the REST protocol's own (the JSON, the
binary data's layout, the paths); the server keeps answering correct requests afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from rest_calls import Answer, call
from server_process import ServerProcess

MODEL = "simple"
WIDTH = 16
HEADER = "Inference-Header-Content-Length"


def operands(batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch)
    shape = (batch, WIDTH)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


@dataclass
class Request:
    """A REST infer request being built: its JSON, its inputs' binary data, its path."""

    document: dict[str, Any]
    data: list[bytes]
    path: str = f"/v2/models/{MODEL}/infer"
    header: str | None = None
    trailing: bytes = b""

    def body(self) -> tuple[bytes, dict[str, str]]:
        text = json.dumps(self.document).encode()
        binary = b"".join(self.data) + self.trailing
        if not binary and self.header is None:
            return text, {}
        return text + binary, {HEADER: self.header or str(len(text))}

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.document["inputs"])


def binary_request(batch: int = 1) -> Request:
    a, b = operands(batch)
    inputs = [
        {
            "name": name,
            "datatype": "FP32",
            "shape": list(value.shape),
            "parameters": {"binary_data_size": value.nbytes},
        }
        for name, value in (("INPUT0", a), ("INPUT1", b))
    ]
    return Request({"inputs": inputs}, [a.tobytes(), b.tobytes()])


def json_request(batch: int = 1) -> Request:
    a, b = operands(batch)
    inputs = [
        {"name": name, "datatype": "FP32", "shape": list(value.shape), "data": value.tolist()}
        for name, value in (("INPUT0", a), ("INPUT1", b))
    ]
    return Request({"inputs": inputs}, [])


def send(address: str, request: Request) -> Answer:
    body, headers = request.body()
    return call(address, "POST", request.path, body, headers)


def assert_serves(address: str) -> None:
    """A correct request gets exact results."""
    a, b = operands(2)
    request = json_request(2)
    answer = send(address, request)
    assert answer.status == 200, answer.body
    outputs = {o["name"]: np.array(o["data"], np.float32) for o in answer.json()["outputs"]}
    np.testing.assert_array_equal(outputs["OUTPUT0"].reshape(2, WIDTH), a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"].reshape(2, WIDTH), a - b)


# --- the gRPC cases, as REST requests --------------------------------------------------------


def _set(index: int, key: str, value: Any) -> Callable[[Request], None]:
    def mutate(r: Request) -> None:
        r.document["inputs"][index][key] = value

    return mutate


def _narrow(r: Request) -> None:
    r.document["inputs"][0]["shape"] = [1, 15]
    r.document["inputs"][0]["parameters"]["binary_data_size"] = 60
    r.data[0] = r.data[0][:60]


def _zero_batch(r: Request) -> None:
    for i in range(2):
        r.document["inputs"][i]["shape"] = [0, WIDTH]
        r.document["inputs"][i]["parameters"]["binary_data_size"] = 0
        r.data[i] = b""


def _size(index: int, size: int) -> Callable[[Request], None]:
    def mutate(r: Request) -> None:
        r.document["inputs"][index]["parameters"]["binary_data_size"] = size
        r.data[index] = (r.data[index] + bytes(64))[:size]

    return mutate


def _missing_input(r: Request) -> None:
    del r.document["inputs"][1]
    del r.data[1]


def _add_input(name: str) -> Callable[[Request], None]:
    def mutate(r: Request) -> None:
        r.document["inputs"].append(
            {
                "name": name,
                "datatype": "FP32",
                "shape": [1, WIDTH],
                "parameters": {"binary_data_size": 4 * WIDTH},
            }
        )
        r.data.append(bytes(4 * WIDTH))

    return mutate


def _outputs(*names: str, **parameters: Any) -> Callable[[Request], None]:
    def mutate(r: Request) -> None:
        r.document["outputs"] = [{"name": n, "parameters": dict(parameters)} for n in names]

    return mutate


def _batch_mismatch(r: Request) -> None:
    r.document["inputs"][0]["shape"] = [2, WIDTH]
    r.document["inputs"][0]["parameters"]["binary_data_size"] = 2 * 4 * WIDTH
    r.data[0] = r.data[0] * 2


def _path(path: str) -> Callable[[Request], None]:
    def mutate(r: Request) -> None:
        r.path = path

    return mutate


@dataclass(frozen=True)
class Case:
    mutate: Callable[[Request], None]
    status: int
    # The message names the tensor or model, the expected and the received value.
    words: tuple[str, ...]
    json_data: bool = False


CASES: dict[str, Case] = {
    "wrong_datatype": Case(_set(0, "datatype", "INT32"), 400, ("INPUT0", MODEL, "FP32", "INT32")),
    "unknown_datatype": Case(_set(1, "datatype", "FLOAT32"), 400, ("INPUT1", "FP32", "FLOAT32")),
    "wrong_rank": Case(_set(0, "shape", [WIDTH]), 400, ("INPUT0", MODEL, "[-1, 16]", "[16]")),
    "wrong_width": Case(_narrow, 400, ("INPUT0", "[-1, 16]", "[1, 15]")),
    "negative_dim": Case(_set(1, "shape", [-1, WIDTH]), 400, ("INPUT1", "shape", "[-1, 16]")),
    "zero_batch": Case(_zero_batch, 400, ("INPUT", "max_batch_size 8", "received 0")),
    "binary_too_short": Case(_size(0, 60), 400, ("INPUT0", "64 bytes", "received 60")),
    "binary_too_long": Case(_size(1, 72), 400, ("INPUT1", "64 bytes", "received 72")),
    "missing_input": Case(_missing_input, 400, ("INPUT1", MODEL, "['INPUT0']")),
    "extra_input": Case(_add_input("INPUT2"), 400, ("INPUT2", MODEL, "['INPUT0', 'INPUT1']")),
    "duplicate_input": Case(_add_input("INPUT0"), 400, ("INPUT0", "more than once")),
    "unknown_output": Case(
        _outputs("OUTPUT0", "OUTPUT7"), 400, ("OUTPUT7", MODEL, "['OUTPUT0', 'OUTPUT1']")
    ),
    "duplicate_output": Case(_outputs("OUTPUT1", "OUTPUT1"), 400, ("OUTPUT1", "more than once")),
    "batch_mismatch": Case(_batch_mismatch, 400, (MODEL, "'INPUT0': 2", "'INPUT1': 1")),
    "unknown_model": Case(_path("/v2/models/no_such_model/infer"), 404, ("no_such_model", MODEL)),
    "unknown_version": Case(
        _path(f"/v2/models/{MODEL}/versions/7/infer"), 404, (MODEL, "'7'", "[1]")
    ),
    "non_numeric_version": Case(
        _path(f"/v2/models/{MODEL}/versions/latest/infer"), 404, ("versions/latest",)
    ),
    # The REST protocol's own.
    "json_count": Case(
        _set(0, "data", [1.0] * 15), 400, ("INPUT0", "16 elements", "received 15"), True
    ),
    "json_strings": Case(
        _set(0, "data", ["x"] * WIDTH), 400, ("INPUT0", "numbers", "FP32", "strings"), True
    ),
    "json_booleans": Case(
        _set(1, "data", [True] * WIDTH), 400, ("INPUT1", "numbers", "FP32", "booleans"), True
    ),
    "json_ragged": Case(_set(0, "data", [[1.0], [1.0, 2.0]]), 400, ("INPUT0", "ragged"), True),
    "json_unknown_datatype": Case(
        _set(1, "datatype", "FLOAT32"), 400, ("INPUT1", "FLOAT32", "FP32"), True
    ),
    "data_and_binary": Case(
        _set(0, "data", [1.0] * WIDTH), 400, ("INPUT0", "'data'", "binary_data_size", "one way")
    ),
    "no_data": Case(_set(0, "data", None), 400, ("INPUT0", "'data'"), True),
    "shape_not_integers": Case(
        _set(0, "shape", ["1", WIDTH]), 400, ("INPUT0", "'shape'", "integers")
    ),
    "name_not_string": Case(_set(0, "name", 3), 400, ("inputs[0]", "'name'", "string", "number")),
    "classification": Case(
        _outputs("OUTPUT0", classification=3), 400, ("OUTPUT0", "classification", "not supported")
    ),
    "binary_data_not_boolean": Case(
        _outputs("OUTPUT0", binary_data="yes"), 400, ("OUTPUT0", "binary_data", "true or false")
    ),
    "reserved_parameter": Case(
        _outputs("OUTPUT0", triton_enable=True), 400, ("OUTPUT0", "triton_enable", "reserved")
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_infer_request(server: ServerProcess, name: str) -> None:
    case = CASES[name]
    request = json_request() if case.json_data else binary_request()
    case.mutate(request)
    if case.json_data:
        for entry in request.document["inputs"]:
            if entry.get("data", 0) is None:
                del entry["data"]
    answer = send(server.http_address, request)
    assert answer.status == case.status, (answer.status, answer.body)
    message = answer.error
    for word in case.words:
        assert word in message, f"{word!r} not in {message!r}"
    assert_serves(server.http_address)


@pytest.mark.parametrize(
    ("body", "header", "words"),
    [
        (b"{", None, ("infer request", "invalid JSON")),
        (b"[]", None, ("infer request", "JSON object", "array")),
        (b"{}", None, ("'inputs'", "array", "none")),
        (b'{"inputs": {}}', None, ("'inputs'", "array", "object")),
        (b'{"inputs": [1]}', None, ("inputs[0]", "object", "number")),
        (b'{"inputs": []}', "abc", (HEADER, "'abc'")),
        (b'{"inputs": []}', "99", (HEADER, "0 to 14", "received 99")),
        (b'{"inputs": []}xx', "14", ("binary data", "expected 0 bytes", "received 2")),
        (
            b'{"inputs": [], "parameters": {"binary_data_output": 1}}',
            None,
            ("binary_data_output", "true or false"),
        ),
    ],
)
def test_malformed_request_bodies(
    server: ServerProcess, body: bytes, header: str | None, words: tuple[str, ...]
) -> None:
    headers = {HEADER: header} if header is not None else {}
    answer = call(server.http_address, "POST", f"/v2/models/{MODEL}/infer", body, headers)
    assert answer.status == 400, answer.body
    for word in words:
        assert word in answer.error, (word, answer.error)


def test_binary_data_past_the_body_is_refused(server: ServerProcess) -> None:
    request = binary_request()
    request.document["inputs"][1]["parameters"]["binary_data_size"] = 128
    answer = send(server.http_address, request)
    assert answer.status == 400
    assert "INPUT1" in answer.error and "128 bytes from byte 64" in answer.error, answer.error


def test_batch_over_max_batch_size(server: ServerProcess) -> None:
    answer = send(server.http_address, binary_request(batch=9))
    assert answer.status == 400
    for word in ("INPUT0", MODEL, "max_batch_size 8", "received 9"):
        assert word in answer.error
    assert send(server.http_address, binary_request(batch=8)).status == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("GET", "/v2/models/no_such_model", 404, ("no_such_model",)),
        ("GET", "/v2/models/no_such_model/config", 404, ("no_such_model",)),
        ("GET", "/v2/models/no_such_model/stats", 404, ("no_such_model",)),
        ("GET", "/v2/models/no_such_model/ready", 404, ("no_such_model",)),
        ("GET", f"/v2/models/{MODEL}/versions/3/ready", 404, ("'3'",)),
        ("GET", f"/v2/models/{MODEL}/infer", 405, ("POST", "GET")),
        ("POST", "/v2/health/ready", 405, ("GET", "POST")),
        ("GET", "/v2/no/such/endpoint", 404, ("/v2/no/such/endpoint",)),
        ("GET", "/v2/systemsharedmemory/region/nope/status", 404, ("nope", "not registered")),
        ("POST", "/v2/repository/index", 400, ("'ready'", "boolean", "string")),
    ],
)
def test_other_endpoints_refuse_naming_what(
    server: ServerProcess, method: str, path: str, status: int, words: tuple[str, ...]
) -> None:
    body = b'{"ready": "yes"}' if path.endswith("index") else None
    answer = call(server.http_address, method, path, body)
    assert answer.status == status, (answer.status, answer.body)
    for word in words:
        assert word in answer.error, (word, answer.error)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        # Integers past protobuf's 64 bits.
        (
            f"/v2/models/{MODEL}/infer",
            b'{"inputs": [], "parameters": {"x": 18446744073709551616}}',
            ("'x'", "18446744073709551615", "received 18446744073709551616"),
        ),
        (
            f"/v2/models/{MODEL}/infer",
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", '
            b'"shape": [9223372036854775808], "data": [1]}]}',
            ("INPUT0", "'shape'", "9223372036854775807"),
        ),
        # A lone UTF-16 surrogate is valid JSON but no text.
        (f"/v2/models/{MODEL}/infer", b'{"id": "\\ud800", "inputs": []}', ("not text",)),
        (
            "/v2/repository/models/m/load",
            b'{"parameters": {"config": "{\\"name\\": \\"\\ud800\\"}"}}',
            ("not text",),
        ),
        # Nested deeper than the parser goes.
        (f"/v2/models/{MODEL}/infer", b"[" * 100_000 + b"]" * 100_000, ("nested deeper",)),
        ("/v2/repository/index", b"[" * 100_000 + b"]" * 100_000, ("nested deeper",)),
        # base64 that is not ASCII, offsets below zero.
        (
            "/v2/repository/models/m/load",
            '{"parameters": {"config": "{}", "file:1/model.onnx": "\u00e9"}}'.encode(),
            ("file:1/model.onnx", "base64"),
        ),
        (
            "/v2/cudasharedmemory/region/c/register",
            '{"raw_handle": {"b64": "\u00e9"}, "device_id": 0, "byte_size": 8}'.encode(),
            ("raw_handle", "base64"),
        ),
        (
            "/v2/systemsharedmemory/region/r/register",
            b'{"key": "/x", "byte_size": 16, "offset": -5}',
            ("'offset'", "from 0", "received -5"),
        ),
    ],
)
def test_hostile_bodies_are_refused_not_internal_errors(
    server: ServerProcess, path: str, body: bytes, words: tuple[str, ...]
) -> None:
    answer = call(server.http_address, "POST", path, body)
    assert answer.status == 400, answer.body[:300]
    for word in words:
        assert word in answer.error, (word, answer.error)
    assert_serves(server.http_address)


def test_a_body_that_does_not_decompress_is_refused(server: ServerProcess) -> None:
    headers = {"Content-Encoding": "gzip"}
    answer = call(server.http_address, "POST", f"/v2/models/{MODEL}/infer", b"not gzip", headers)
    assert answer.status == 400, answer.body
    assert "could not be read" in answer.error, answer.error


def test_json_data_over_the_element_limit_is_refused_before_it_is_converted(
    server: ServerProcess,
) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1], "data": ["ab"] * 5}]}
    answer = call(server.http_address, "POST", f"/v2/models/{MODEL}/infer", body)
    assert answer.status == 400
    assert "expected 1 elements (shape [1]), received more" in answer.error, answer.error
