"""Our client and the client CLI commands against a real server over gRPC on 127.0.0.1.

`server_address` (tests/conftest.py) is a running `trtserve serve` with the built-in `simple`
model: INPUT0, INPUT1 FP32 [-1, 16]; OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1;
max_batch_size 8.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from trtserve.cli.main import main
from trtserve.client import (
    AsyncInferenceClient,
    InferenceClient,
    InferenceServerError,
    InferInput,
    InferRequest,
    run_load,
)

onnx = pytest.importorskip("onnx")


def simple_inputs(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, 16)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(
        np.float32
    )


def simple_request(a: np.ndarray, b: np.ndarray) -> list[InferInput]:
    return [InferInput("INPUT0", a), InferInput("INPUT1", b)]


def add_model_onnx() -> bytes:
    """An ONNX model: Z = X + Y, FP32 [batch, 16]."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 16])
    z = helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 16])
    graph = helper.make_graph([helper.make_node("Add", ["X", "Y"], ["Z"])], "add", [x, y], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def add_model_config(name: str) -> str:
    tensor = {"data_type": "TYPE_FP32", "dims": [16]}
    return json.dumps(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 8,
            "input": [{"name": "X", **tensor}, {"name": "Y", **tensor}],
            "output": [{"name": "Z", **tensor}],
        }
    )


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def is_ready(client: InferenceClient, name: str) -> bool:
    """ModelReady of an unloaded model: false, or NOT_FOUND once it is gone from the index."""
    try:
        return client.model_ready(name)
    except InferenceServerError as e:
        assert e.code == grpc.StatusCode.NOT_FOUND
        return False


@pytest.fixture
def client(server_address: str) -> Iterator[InferenceClient]:
    with InferenceClient(server_address, timeout=30) as c:
        yield c


# --- sync client -------------------------------------------------------------------------


def test_health_and_server_metadata(client: InferenceClient) -> None:
    assert client.server_live() is True
    assert client.server_ready() is True
    meta = client.server_metadata()
    assert meta.name and meta.version
    assert client.model_ready("simple") is True


def test_model_metadata_and_config(client: InferenceClient) -> None:
    meta = client.model_metadata("simple")
    assert meta.name == "simple"
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("INPUT0", "FP32", (-1, 16)),
        ("INPUT1", "FP32", (-1, 16)),
    ]
    assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]
    config = client.model_config("simple")
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]


def test_infer_raw_and_typed(client: InferenceClient) -> None:
    a, b = simple_inputs(batch=3)
    for typed in (False, True):
        result = client.infer(
            "simple", simple_request(a, b), request_id="req-1", use_typed_contents=typed
        )
        assert result.model_name == "simple"
        assert result.id == "req-1"
        assert result.datatypes == {"OUTPUT0": "FP32", "OUTPUT1": "FP32"}
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_infer_requested_output_only(client: InferenceClient) -> None:
    a, b = simple_inputs(batch=1)
    result = client.infer("simple", simple_request(a, b), outputs=["OUTPUT1"])
    assert list(result.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_infer_errors_carry_status_and_message(client: InferenceClient) -> None:
    a, b = simple_inputs(batch=1)
    with pytest.raises(InferenceServerError) as missing:
        client.infer("no_such_model", simple_request(a, b))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in missing.value.message

    wrong = [InferInput("INPUT0", a.astype(np.int32)), InferInput("INPUT1", b)]
    with pytest.raises(InferenceServerError) as bad:
        client.infer("simple", wrong)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in bad.value.message


def test_statistics_count_inferences(client: InferenceClient) -> None:
    (before,) = client.model_statistics("simple")
    a, b = simple_inputs(batch=2)
    for _ in range(3):
        client.infer("simple", simple_request(a, b))
    (after,) = client.model_statistics("simple")
    assert after.name == "simple"
    assert after.inference_count - before.inference_count >= 6  # 3 requests of batch 2
    assert after.success.count - before.success.count >= 3
    assert after.execution_count > before.execution_count
    assert "simple" in {s.name for s in client.model_statistics()}


def test_repository_index_lists_simple(client: InferenceClient) -> None:
    entries = {e.name: e for e in client.repository_index()}
    assert "simple" in entries
    assert entries["simple"].state == "READY"


def test_stream_infer_answers_every_request(client: InferenceClient) -> None:
    pairs = [simple_inputs(batch=1, seed=i) for i in range(4)]
    requests = [
        InferRequest("simple", simple_request(a, b), request_id=f"s{i}")
        for i, (a, b) in enumerate(pairs)
    ]
    # Responses may come back in completion order; the id ties each to its request.
    by_id = {r.id: r for r in client.stream_infer(requests)}
    assert sorted(by_id) == ["s0", "s1", "s2", "s3"]
    for i, (a, b) in enumerate(pairs):
        np.testing.assert_array_equal(by_id[f"s{i}"].as_numpy("OUTPUT0"), a + b)


def test_stream_infer_errors(client: InferenceClient) -> None:
    a, b = simple_inputs(batch=1)
    requests = [
        InferRequest("simple", simple_request(a, b), request_id="ok1"),
        InferRequest("no_such_model", simple_request(a, b), request_id="bad"),
        InferRequest("simple", simple_request(a, b), request_id="ok2"),
    ]
    items = list(client.stream_infer(requests, raise_errors=False))
    errors = [i for i in items if isinstance(i, InferenceServerError)]
    results = [i for i in items if not isinstance(i, InferenceServerError)]
    assert len(errors) == 1
    assert "no_such_model" in errors[0].message
    assert sorted(r.id for r in results) == ["ok1", "ok2"]
    with pytest.raises(InferenceServerError, match="no_such_model"):
        list(client.stream_infer(requests))


def test_load_infer_unload_with_file_override(client: InferenceClient) -> None:
    name = unique("client_add")
    client.load_model(name, config=add_model_config(name), files={"1/model.onnx": add_model_onnx()})
    try:
        assert client.model_ready(name) is True
        assert name in {e.name for e in client.repository_index()}
        x, y = simple_inputs(batch=4)
        result = client.infer(name, [InferInput("X", x), InferInput("Y", y)])
        np.testing.assert_allclose(result.as_numpy("Z"), x + y)
    finally:
        client.unload_model(name)
    assert is_ready(client, name) is False


def test_load_corrupt_model_file_is_refused(client: InferenceClient) -> None:
    name = unique("client_corrupt")
    with pytest.raises(InferenceServerError) as e:
        client.load_model(name, config=add_model_config(name), files={"1/model.onnx": b"junk"})
    assert e.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert is_ready(client, name) is False


def test_upload_model_stores_and_loads(client: InferenceClient, tmp_path: Path) -> None:
    name = unique("client_upload")
    data = add_model_onnx()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    progress: list[tuple[int, int]] = []
    result = client.upload_model(
        name,
        path,
        filename="model.onnx",
        config_json=add_model_config(name),
        chunk_bytes=64,
        progress=lambda sent, total: progress.append((sent, total)),
    )
    try:
        assert result.model_name == name
        assert result.version >= 1
        assert result.stored_bytes == len(data)
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert progress[-1] == (len(data), len(data))
        assert len(progress) == -(-len(data) // 64)
        x, y = simple_inputs(batch=1)
        z = client.infer(name, [InferInput("X", x), InferInput("Y", y)]).as_numpy("Z")
        np.testing.assert_allclose(z, x + y)
    finally:
        client.unload_model(name)


def test_oversized_request_is_refused_by_client_limit(server_address: str) -> None:
    with InferenceClient(server_address, max_message_bytes=1024) as small:
        a, b = simple_inputs(batch=8)
        with pytest.raises(InferenceServerError) as e:
            small.infer("simple", simple_request(a, b))
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- asyncio client ----------------------------------------------------------------------


def test_async_client_every_method(server_address: str) -> None:
    async def scenario() -> None:
        async with AsyncInferenceClient(server_address, timeout=30) as client:
            assert await client.server_live() is True
            assert await client.server_ready() is True
            assert (await client.server_metadata()).name
            assert await client.model_ready("simple") is True
            meta = await client.model_metadata("simple")
            assert [t.name for t in meta.inputs] == ["INPUT0", "INPUT1"]
            assert (await client.model_config("simple"))["max_batch_size"] == 8
            assert "simple" in {e.name for e in await client.repository_index()}

            pairs = [simple_inputs(batch=1, seed=i) for i in range(16)]
            results = await asyncio.gather(
                *(client.infer("simple", simple_request(a, b)) for a, b in pairs)
            )
            for r, (a, b) in zip(results, pairs, strict=True):
                np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
            (stats,) = await client.model_statistics("simple")
            assert stats.inference_count >= 16

            async def requests() -> AsyncIterator[InferRequest]:
                for i, (a, b) in enumerate(pairs[:3]):
                    yield InferRequest("simple", simple_request(a, b), request_id=str(i))

            ids = [r.id async for r in client.stream_infer(requests())]
            assert sorted(ids) == ["0", "1", "2"]

            with pytest.raises(InferenceServerError) as e:
                await client.infer("no_such_model", simple_request(*pairs[0]))
            assert e.value.code == grpc.StatusCode.NOT_FOUND

            name = unique("client_async")
            await client.load_model(
                name, config=add_model_config(name), files={"1/model.onnx": add_model_onnx()}
            )
            assert await client.model_ready(name) is True
            await client.unload_model(name)

            uploaded = unique("client_async_up")
            result = await client.upload_model(
                uploaded,
                add_model_onnx(),
                filename="model.onnx",
                config_json=add_model_config(uploaded),
            )
            assert result.stored_bytes == len(add_model_onnx())
            assert await client.model_ready(uploaded) is True
            await client.unload_model(uploaded)

    asyncio.run(scenario())


def test_run_load_counts_every_request(server_address: str) -> None:
    a, b = simple_inputs(batch=1)
    result = run_load(server_address, "simple", simple_request(a, b), concurrency=4, requests=40)
    assert result.count == 40
    assert result.errors == {}
    assert result.throughput > 0
    assert result.p50_ms is not None and result.p99_ms is not None
    assert result.p50_ms <= result.p99_ms

    timed = run_load(server_address, "simple", simple_request(a, b), concurrency=2, duration_s=0.2)
    assert timed.count > 0

    with pytest.raises(InferenceServerError) as e:
        run_load(server_address, "no_such_model", simple_request(a, b), requests=5)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_run_load_over_processes(server_address: str) -> None:
    a, b = simple_inputs(batch=1)
    inputs = simple_request(a, b)
    result = run_load(server_address, "simple", inputs, concurrency=3, requests=31, processes=2)
    assert (result.count, result.concurrency, result.errors) == (31, 3, {})
    with pytest.raises(InferenceServerError) as e:
        run_load(server_address, "no_such_model", inputs, concurrency=2, requests=4, processes=2)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


# --- CLI -------------------------------------------------------------------------------


def test_cli_infer_random_inputs_json(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["infer", "simple", "--address", server_address, "--batch", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "simple"
    assert report["latency_ms"] > 0
    assert {o["name"]: o["shape"] for o in report["outputs"]} == {
        "OUTPUT0": [3, 16],
        "OUTPUT1": [3, 16],
    }
    assert all(len(o["values"]) == 8 for o in report["outputs"])


def test_cli_infer_file_inputs_text(
    server_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    args = ["infer", "simple", "--address", server_address, "--max-values", "3"]
    args += ["--input", f"INPUT0={tmp_path / 'a.npy'}", "--input", f"INPUT1={tmp_path / 'b.npy'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "OUTPUT0  FP32  [1, 16]  [1.0, 2.0, 3.0]" in out
    assert "OUTPUT1  FP32  [1, 16]  [-1.0, 0.0, 1.0]" in out
    assert "latency:" in out


def test_cli_infer_errors(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", "no_such_model", "--address", server_address]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["infer", "simple", "--address", server_address, "--input", "NOPE=x.npy"]) == 2


def test_cli_models_list_load_unload(
    server_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--address", server_address, "--json"]) == 0
    assert "simple" in {e["name"] for e in json.loads(capsys.readouterr().out)}

    name = unique("client_cli")
    (tmp_path / "config.json").write_text(add_model_config(name))
    (tmp_path / "model.onnx").write_bytes(add_model_onnx())
    load = ["models", "load", name, "--address", server_address]
    load += ["--config", str(tmp_path / "config.json")]
    load += ["--file", f"1/model.onnx={tmp_path / 'model.onnx'}"]
    assert main(load) == 0
    assert main(["models", "list", "--address", server_address]) == 0
    table = capsys.readouterr().out
    assert any(line.split()[:1] == [name] for line in table.splitlines())
    assert main(["models", "unload", name, "--address", server_address]) == 0
    capsys.readouterr()
    assert main(["models", "unload", "no_such_model", "--address", server_address]) == 1
    assert "no_such_model" in capsys.readouterr().err


def test_cli_bench_json(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "simple", "--address", server_address, "--concurrency", "2"]
    assert main([*args, "--requests", "20", "--batch", "2", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 20
    assert result["concurrency"] == 2
    assert result["errors"] == {}
    assert result["p50_ms"] <= result["p99_ms"]


def test_cli_upload(
    server_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("client_cli_up")
    (tmp_path / "config.json").write_text(add_model_config(name))
    (tmp_path / "add.onnx").write_bytes(add_model_onnx())
    args = ["upload", str(tmp_path / "add.onnx"), "--name", name, "--filename", "model.onnx"]
    args += ["--config", str(tmp_path / "config.json"), "--address", server_address]
    assert main([*args, "--no-progress"]) == 0
    assert f"stored {name} version" in capsys.readouterr().out
    with InferenceClient(server_address) as client:
        assert client.model_ready(name) is True
        client.unload_model(name)


def test_cli_entry_point_runs_as_module(server_address: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trtserve.cli.main", "infer", "simple", "--address", server_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OUTPUT0  FP32  [1, 16]" in done.stdout
