"""Stock tritonclient.http against a real trtserve process: every call it has.

Results are checked against numpy (the built-in `simple` model adds and subtracts its inputs;
a BYTES model returns its input), and what a load sends lands in the repository.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper
from server_process import ServerProcess, start_server
from tritonclient.utils import InferenceServerException

from trtserve.server.default_model import build_simple_model, write_default_repository

MODEL = "simple"
WIDTH = 16
TIMEOUT_S = 30.0


def bytes_model() -> bytes:
    """An ONNX model whose STRING output is its STRING input, shape [-1, -1]."""
    x = helper.make_tensor_value_info("TEXT", TensorProto.STRING, [None, None])
    y = helper.make_tensor_value_info("ECHO", TensorProto.STRING, [None, None])
    graph = helper.make_graph([helper.make_node("Identity", ["TEXT"], ["ECHO"])], "echo", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http-repository")
    write_default_repository(root)
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "1" / "model.onnx").write_bytes(bytes_model())
    (root / "echo" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1, -1 ] } ]\n'
        'output [ { name: "ECHO" data_type: TYPE_STRING dims: [ -1, -1 ] } ]\n'
    )
    return root


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[ServerProcess]:
    proc = start_server(["--repository", str(repository)])
    yield proc
    assert proc.terminate() == 0


@pytest.fixture()
def client(served: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(served.http_address, network_timeout=TIMEOUT_S)
    yield client
    client.close()


def operands(seed: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, WIDTH)).astype(np.float32),
        rng.standard_normal((batch, WIDTH)).astype(np.float32),
    )


def inputs(a: np.ndarray, b: np.ndarray, binary: bool = True) -> list[httpclient.InferInput]:
    made = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        made.append(tensor)
    return made


def check(result: httpclient.InferResult, a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "trtserve" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "FP32", [-1, WIDTH]),
        ("INPUT1", "FP32", [-1, WIDTH]),
    ]
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [WIDTH]
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)]
)
def test_infer_with_binary_and_json_tensors(
    client: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    a, b = operands(1, 3)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary_out)
        for name in ("OUTPUT0", "OUTPUT1")
    ]
    result = client.infer(MODEL, inputs(a, b, binary_in), outputs=outputs, request_id="r7")
    check(result, a, b)
    response = result.get_response()
    assert response["id"] == "r7" and response["model_version"] == "1"
    for output in response["outputs"]:
        assert ("data" in output) is not binary_out, output


def test_infer_one_requested_output(client: httpclient.InferenceServerClient) -> None:
    a, b = operands(2, 2)
    result = client.infer(MODEL, inputs(a, b), outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(
    client: httpclient.InferenceServerClient, algorithm: str
) -> None:
    a, b = operands(3, 4)
    result = client.infer(
        MODEL,
        inputs(a, b),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    check(result, a, b)


def test_async_infer(client: httpclient.InferenceServerClient) -> None:
    pending = [
        (client.async_infer(MODEL, inputs(*operands(s, 2))), operands(s, 2)) for s in range(6)
    ]
    for handle, (a, b) in pending:
        check(handle.get_result(), a, b)


def test_aio_client(served: ServerProcess) -> None:
    async def main() -> None:
        async with aiohttpclient.InferenceServerClient(served.http_address) as client:
            assert await client.is_server_ready()
            a, b = operands(4, 2)
            tensors = []
            for name, value in (("INPUT0", a), ("INPUT1", b)):
                tensor = aiohttpclient.InferInput(name, list(value.shape), "FP32")
                tensor.set_data_from_numpy(value)
                tensors.append(tensor)
            check(await client.infer(MODEL, tensors), a, b)

    asyncio.run(main())


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors(client: httpclient.InferenceServerClient, binary: bool) -> None:
    text = np.array([["héllo", "w"], ["", "x" * 300]], dtype=object)
    tensor = httpclient.InferInput("TEXT", [2, 2], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=binary)
    output = httpclient.InferRequestedOutput("ECHO", binary_data=binary)
    result = client.infer("echo", [tensor], outputs=[output])
    echoed = result.as_numpy("ECHO")
    assert echoed is not None
    assert [[e.decode() if isinstance(e, bytes) else e for e in row] for row in echoed] == (
        text.tolist()
    )


def test_statistics_count_what_ran(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics(MODEL, "1")["model_stats"][0]
    a, b = operands(5, 2)
    client.infer(MODEL, inputs(a, b))
    after = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert after["version"] == "1"
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1
    )
    assert after["inference_count"] == before["inference_count"] + 2
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == {MODEL, "echo"}


def test_load_with_config_and_files_then_unload(
    client: httpclient.InferenceServerClient, repository: Path
) -> None:
    client.load_model(MODEL)  # a plain reload
    assert client.is_model_ready(MODEL)
    config = {
        "name": "uploaded",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 4,
        "version_policy": {"all": {}},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    onnx_bytes = build_simple_model()
    files = {"file:1/model.onnx": onnx_bytes, "file:2/model.onnx": onnx_bytes}
    client.load_model("uploaded", config=json.dumps(config), files=files)
    assert client.get_model_metadata("uploaded")["versions"] == ["1", "2"]
    a, b = operands(6, 4)
    check(client.infer("uploaded", inputs(a, b), model_version="1"), a, b)
    assert (repository / "uploaded" / "2" / "model.onnx").read_bytes() == onnx_bytes
    index = {(m["name"], m.get("version")): m for m in client.get_model_repository_index()}
    assert index["uploaded", "1"]["state"] == "READY" and index["uploaded", "2"]["state"] == "READY"

    client.unload_model("uploaded")
    assert not client.is_model_ready("uploaded")
    [entry] = [m for m in client.get_model_repository_index() if m["name"] == "uploaded"]
    assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")
    with pytest.raises(InferenceServerException) as refused:
        client.infer("uploaded", inputs(a, b))
    assert refused.value.status() == "503", refused.value
    client.load_model("uploaded")  # the files the first load wrote
    assert client.is_model_ready("uploaded")


def test_a_bad_load_is_refused_naming_the_field(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("broken", config=json.dumps({"max_batch_sise": 8}))
    assert refused.value.status() == "400"
    assert "max_batch_sise" in str(refused.value) and "max_batch_size" in str(refused.value)
    with pytest.raises(InferenceServerException) as missing:
        client.unload_model("never_loaded")
    assert missing.value.status() == "404"


def test_system_shared_memory_in_and_out(client: httpclient.InferenceServerClient) -> None:
    a, b = operands(7, 2)
    size = a.nbytes
    handle = shm.create_shared_memory_region("http_io", "/trtserve_http_io", 4 * size)
    try:
        shm.set_shared_memory_region(handle, [a, b])
        client.register_system_shared_memory("http_io", "/trtserve_http_io", 4 * size)
        [status] = client.get_system_shared_memory_status("http_io")
        assert (status["name"], status["byte_size"]) == ("http_io", 4 * size)
        tensors = []
        for index, name in enumerate(("INPUT0", "INPUT1")):
            tensor = httpclient.InferInput(name, [2, WIDTH], "FP32")
            tensor.set_shared_memory("http_io", size, offset=index * size)
            tensors.append(tensor)
        outputs = []
        for index, name in enumerate(("OUTPUT0", "OUTPUT1")):
            output = httpclient.InferRequestedOutput(name, binary_data=False)
            output.set_shared_memory("http_io", size, offset=(2 + index) * size)
            outputs.append(output)
        result = client.infer(MODEL, tensors, outputs=outputs)
        # In the region: the response has the output's header only, as Triton's has.
        assert result.get_output("OUTPUT0") == {
            "name": "OUTPUT0",
            "datatype": "FP32",
            "shape": [2, WIDTH],
        }
        placed = shm.get_contents_as_numpy(handle, np.float32, [4, 2, WIDTH])
        np.testing.assert_array_equal(placed[2], a + b)
        np.testing.assert_array_equal(placed[3], a - b)
        client.unregister_system_shared_memory("http_io")
        assert client.get_system_shared_memory_status() == []
    finally:
        shm.destroy_shared_memory_region(handle)


def test_cuda_shared_memory_without_a_gpu_is_refused(
    client: httpclient.InferenceServerClient,
) -> None:
    assert client.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException) as refused:
        client.register_cuda_shared_memory("gpu", b"\x00" * 64, 0, 1024)
    assert refused.value.status() == "400", refused.value
    assert "gpu" in str(refused.value)


def test_trace_and_log_settings_are_not_implemented(
    client: httpclient.InferenceServerClient,
) -> None:
    for call in (
        client.get_trace_settings,
        lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
        client.get_log_settings,
    ):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "501", refused.value
        assert "not implemented" in str(refused.value)
