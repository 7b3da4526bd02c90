"""tritonclient scenarios against a running trtserve, one function each, with their assertions.

tritonclient's generated protobuf modules register the same `inference.*` names as
trtserve.protocol in protobuf's default descriptor pool, so both cannot live in one process.
This module therefore imports only tritonclient, numpy and the standard library;
test_tritonclient.py runs each function in a freshly spawned interpreter.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

MODEL = "simple"
WIDTH = 16
# Bounds every wait for a server answer, so a hang fails the test instead of blocking it.
TIMEOUT_S = 30.0


_Scenario = TypeVar("_Scenario", bound=Callable[..., None])


def scenario(function: _Scenario) -> _Scenario:
    """Re-raise any failure as an AssertionError holding the traceback as text.

    The error travels back to the test process by pickle, and assertion messages here often
    hold protobuf messages, which do not pickle.
    """

    @functools.wraps(function)
    def run(*args: Any) -> None:
        try:
            function(*args)
        except BaseException:
            raise AssertionError(traceback.format_exc()) from None

    return run  # type: ignore[return-value]


def _client(address: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(address)


def _operands(seed: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, WIDTH)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


def _inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    tensors = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def _check_result(result: Any, a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    for name in ("OUTPUT0", "OUTPUT1"):
        output = result.get_output(name)
        assert output.datatype == "FP32", output
        assert list(output.shape) == list(a.shape), output


def _expect_status(call: Callable[[], object], code: str) -> InferenceServerException:
    try:
        call()
    except InferenceServerException as error:
        assert error.status() == f"StatusCode.{code}", (error.status(), error.message())
        return error
    raise AssertionError(f"expected status {code}, the call succeeded")


@scenario
def check_server_and_model_metadata(address: str) -> None:
    """Liveness, readiness, server/model metadata, config, index and statistics."""
    client = _client(address)
    assert client.is_server_live(client_timeout=TIMEOUT_S)
    assert client.is_server_ready(client_timeout=TIMEOUT_S)
    assert client.is_model_ready(MODEL, client_timeout=TIMEOUT_S)
    assert client.is_model_ready(MODEL, "1", client_timeout=TIMEOUT_S)
    assert not client.is_model_ready(MODEL, "2", client_timeout=TIMEOUT_S)
    assert not client.is_model_ready("no_such_model", client_timeout=TIMEOUT_S)

    server = client.get_server_metadata(client_timeout=TIMEOUT_S)
    assert server.name == "trtserve" and server.version, server
    assert "model_repository" in server.extensions, server
    server_json = client.get_server_metadata(as_json=True, client_timeout=TIMEOUT_S)
    assert server_json["name"] == "trtserve", server_json

    meta = client.get_model_metadata(MODEL, client_timeout=TIMEOUT_S)
    assert meta.name == MODEL and list(meta.versions) == ["1"], meta
    assert meta.platform == "onnxruntime_onnx", meta
    tensors = {t.name: (t.datatype, list(t.shape)) for t in [*meta.inputs, *meta.outputs]}
    assert tensors == {
        name: ("FP32", [-1, WIDTH]) for name in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")
    }, tensors
    meta_json = client.get_model_metadata(MODEL, as_json=True, client_timeout=TIMEOUT_S)
    assert [t["name"] for t in meta_json["inputs"]] == ["INPUT0", "INPUT1"], meta_json
    _expect_status(lambda: client.get_model_metadata("no_such_model"), "NOT_FOUND")

    config = client.get_model_config(MODEL, client_timeout=TIMEOUT_S).config
    assert config.name == MODEL and config.max_batch_size == 8, config
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"], config
    assert list(config.input[0].dims) == [WIDTH], config
    assert config.HasField("dynamic_batching"), config
    assert sum(g.count for g in config.instance_group) == 2, config
    config_json = client.get_model_config(MODEL, as_json=True, client_timeout=TIMEOUT_S)
    assert config_json["config"]["max_batch_size"] == 8, config_json
    assert config_json["config"]["platform"] == "onnxruntime_onnx", config_json
    _expect_status(lambda: client.get_model_config(MODEL, "9"), "NOT_FOUND")

    index = client.get_model_repository_index(client_timeout=TIMEOUT_S)
    states = {m.name: m.state for m in index.models}
    assert states.get(MODEL) == "READY", index
    index_json = client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    assert any(m["name"] == MODEL for m in index_json["models"]), index_json

    a, b = _operands(0, 1)
    client.infer(MODEL, _inputs(a, b), client_timeout=TIMEOUT_S)
    # Version "1" only: other tests on the shared server may have named versions that do not
    # exist (see test_health_metrics.py's unknown-name test).
    before = client.get_inference_statistics(MODEL, "1", client_timeout=TIMEOUT_S).model_stats
    assert [(s.name, s.version) for s in before] == [(MODEL, "1")], before
    client.infer(MODEL, _inputs(a, b), client_timeout=TIMEOUT_S)
    after = client.get_inference_statistics(MODEL, "1", client_timeout=TIMEOUT_S).model_stats[0]
    assert after.inference_count == before[0].inference_count + 1, (before, after)
    assert after.inference_stats.success.count == before[0].inference_stats.success.count + 1
    assert after.execution_count == before[0].execution_count + 1, (before, after)
    stats_json = client.get_inference_statistics(MODEL, as_json=True, client_timeout=TIMEOUT_S)
    assert stats_json["model_stats"][0]["name"] == MODEL, stats_json
    _expect_status(lambda: client.get_inference_statistics("no_such_model"), "NOT_FOUND")
    client.close()


@scenario
def check_statistics_before_first_request(address: str) -> None:
    """A loaded model that has served nothing yet has a statistics entry with zero counts.

    perf_analyzer reads the statistics before its first request and looks for the model.
    """
    client = _client(address)
    stats = client.get_inference_statistics(MODEL, client_timeout=TIMEOUT_S).model_stats
    assert [(s.name, s.version) for s in stats] == [(MODEL, "1")], stats
    assert stats[0].inference_count == 0 and stats[0].execution_count == 0, stats
    everything = client.get_inference_statistics(client_timeout=TIMEOUT_S).model_stats
    assert MODEL in [s.name for s in everything], everything
    client.close()


@scenario
def check_infer(address: str) -> None:
    """Blocking infer: exact outputs for every batch size, requested outputs, ids, errors."""
    client = _client(address)
    for batch in range(1, 9):
        a, b = _operands(batch, batch)
        result = client.infer(
            MODEL, _inputs(a, b), request_id=f"req-{batch}", client_timeout=TIMEOUT_S
        )
        _check_result(result, a, b)
        response = result.get_response()
        assert response.id == f"req-{batch}", response.id
        assert response.model_name == MODEL and response.model_version == "1", response

    a, b = _operands(42, 3)
    only_diff = client.infer(
        MODEL,
        _inputs(a, b),
        model_version="1",
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
        client_timeout=TIMEOUT_S,
    )
    assert only_diff.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only_diff.as_numpy("OUTPUT1"), a - b)

    a, b = _operands(7, 9)
    error = _expect_status(lambda: client.infer(MODEL, _inputs(a, b)), "INVALID_ARGUMENT")
    assert "max_batch_size 8" in error.message() and "9" in error.message(), error.message()
    wrong = grpcclient.InferInput("INPUT0", [1, WIDTH], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, WIDTH), np.int32))
    error = _expect_status(
        lambda: client.infer(MODEL, [wrong, _inputs(a[:1], b[:1])[1]]), "INVALID_ARGUMENT"
    )
    assert "INPUT0" in error.message() and "FP32" in error.message(), error.message()
    _expect_status(lambda: client.infer("no_such_model", _inputs(a[:1], b[:1])), "NOT_FOUND")
    client.close()


@scenario
def check_async_infer(address: str) -> None:
    """async_infer delivers every result to its callback, each matching its own inputs."""
    client = _client(address)
    done: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
    operands = {f"async-{i}": _operands(100 + i, 1 + i % 4) for i in range(12)}
    for request_id, (a, b) in operands.items():
        client.async_infer(
            MODEL,
            _inputs(a, b),
            callback=lambda result, error, rid=request_id: done.put((rid, result, error)),
            request_id=request_id,
            client_timeout=TIMEOUT_S,
        )
    seen = set()
    for _ in operands:
        request_id, result, error = done.get(timeout=TIMEOUT_S)
        assert error is None, error
        assert result.get_response().id == request_id
        _check_result(result, *operands[request_id])
        seen.add(request_id)
    assert seen == set(operands)
    client.close()


@scenario
def check_stream_infer(address: str) -> None:
    """A bidirectional stream: many requests, results matched by id, an error mid-stream."""
    client = _client(address)
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put((result, error)))
    operands = {f"stream-{i}": _operands(200 + i, 1 + i % 3) for i in range(16)}
    items = list(operands.items())
    for request_id, (a, b) in items[:8]:
        client.async_stream_infer(MODEL, _inputs(a, b), request_id=request_id)
    # A bad request in the middle gets an error on the stream; the stream keeps going.
    bad_a, bad_b = _operands(9, 9)
    client.async_stream_infer(MODEL, _inputs(bad_a, bad_b), request_id="stream-bad")
    for request_id, (a, b) in items[8:]:
        client.async_stream_infer(MODEL, _inputs(a, b), request_id=request_id)

    results: dict[str, Any] = {}
    errors = []
    for _ in range(len(operands) + 1):
        result, error = done.get(timeout=TIMEOUT_S)
        if error is not None:
            errors.append(error)
            continue
        request_id = result.get_response().id
        assert request_id not in results, f"two results for {request_id}"
        results[request_id] = result
    client.stop_stream()
    assert set(results) == set(operands), sorted(results)
    for request_id, result in results.items():
        _check_result(result, *operands[request_id])
    assert len(errors) == 1, errors
    assert "max_batch_size 8" in errors[0].message(), errors[0].message()
    client.close()


@scenario
def check_unimplemented(address: str) -> None:
    """Trace and log settings RPCs are answered UNIMPLEMENTED."""
    client = _client(address)
    calls: dict[str, Callable[[], object]] = {
        "get_trace_settings": client.get_trace_settings,
        "update_trace_settings": lambda: client.update_trace_settings(
            settings={"trace_level": ["OFF"]}
        ),
        "get_log_settings": client.get_log_settings,
        "update_log_settings": lambda: client.update_log_settings({"log_info": False}),
    }
    for name, call in calls.items():
        try:
            call()
        except InferenceServerException as error:
            assert error.status() == "StatusCode.UNIMPLEMENTED", (name, error.status())
        else:
            raise AssertionError(f"{name}: expected UNIMPLEMENTED, the call succeeded")
    # The connection is still good for implemented RPCs.
    assert client.is_server_live(client_timeout=TIMEOUT_S)
    client.close()


@scenario
def check_load_and_unload(address: str, onnx_bytes: bytes) -> None:
    """load_model: plain reload, a new model from config JSON + file override, unload, reload."""
    client = _client(address)
    client.load_model(MODEL, client_timeout=TIMEOUT_S)
    assert client.is_model_ready(MODEL, client_timeout=TIMEOUT_S)
    a, b = _operands(1, 2)
    _check_result(client.infer(MODEL, _inputs(a, b), client_timeout=TIMEOUT_S), a, b)

    name = "uploaded"
    config = json.dumps(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 4,
            "input": [
                {"name": n, "data_type": "TYPE_FP32", "dims": [WIDTH]} for n in ("INPUT0", "INPUT1")
            ],
            "output": [
                {"name": n, "data_type": "TYPE_FP32", "dims": [WIDTH]}
                for n in ("OUTPUT0", "OUTPUT1")
            ],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        }
    )
    assert not client.is_model_ready(name, client_timeout=TIMEOUT_S)
    client.load_model(
        name, config=config, files={"file:1/model.onnx": onnx_bytes}, client_timeout=TIMEOUT_S
    )
    assert client.is_model_ready(name, "1", client_timeout=TIMEOUT_S)
    assert client.get_model_config(name, client_timeout=TIMEOUT_S).config.max_batch_size == 4
    a, b = _operands(2, 4)
    _check_result(client.infer(name, _inputs(a, b), client_timeout=TIMEOUT_S), a, b)
    a, b = _operands(3, 5)
    _expect_status(lambda: client.infer(name, _inputs(a, b)), "INVALID_ARGUMENT")
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index[name].state == "READY" and index[name].version == "1", index

    client.unload_model(name, client_timeout=TIMEOUT_S)
    assert not client.is_model_ready(name, client_timeout=TIMEOUT_S)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index[name].state == "UNAVAILABLE", index
    a, b = _operands(4, 1)
    _expect_status(lambda: client.infer(name, _inputs(a, b)), "UNAVAILABLE")
    assert client.is_model_ready(MODEL, client_timeout=TIMEOUT_S), "unload touched another model"

    # The files the first load wrote are in the repository: a plain load finds them.
    client.load_model(name, client_timeout=TIMEOUT_S)
    assert client.is_model_ready(name, client_timeout=TIMEOUT_S)
    _check_result(client.infer(name, _inputs(a, b), client_timeout=TIMEOUT_S), a, b)
    _expect_status(lambda: client.load_model("never_written"), "NOT_FOUND")
    client.close()


@scenario
def check_aio_infer(address: str) -> None:
    """tritonclient.grpc.aio: readiness and one infer on the event loop."""

    async def scenario() -> None:
        client = aioclient.InferenceServerClient(address)
        try:
            assert await client.is_server_ready(client_timeout=TIMEOUT_S)
            a, b = _operands(300, 3)
            inputs = []
            for name, value in (("INPUT0", a), ("INPUT1", b)):
                tensor = aioclient.InferInput(name, list(value.shape), "FP32")
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            result = await client.infer(MODEL, inputs, request_id="aio-1", client_timeout=TIMEOUT_S)
            assert result.get_response().id == "aio-1"
            _check_result(result, a, b)
        finally:
            await client.close()

    asyncio.run(scenario())


@scenario
def check_versions(address: str, onnx_bytes: bytes) -> None:
    """version_policy all: both versions serve at once, each reachable by number."""
    client = _client(address)
    name = "versioned"
    config = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": 4,
        "version_policy": {"all": {}},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    files = {f"file:{v}/model.onnx": onnx_bytes for v in (1, 2)}
    client.load_model(name, config=json.dumps(config), files=files, client_timeout=TIMEOUT_S)
    metadata = client.get_model_metadata(name, client_timeout=TIMEOUT_S)
    assert list(metadata.versions) == ["1", "2"], metadata.versions
    assert client.is_model_ready(name, "1") and client.is_model_ready(name, "2")
    assert not client.is_model_ready(name, "3")
    a, b = _operands(1, 2)
    for asked, answered in (("1", "1"), ("2", "2"), ("", "2")):
        result = client.infer(name, _inputs(a, b), model_version=asked, client_timeout=TIMEOUT_S)
        _check_result(result, a, b)
        assert result.get_response().model_version == answered, (asked, result.get_response())
    _expect_status(lambda: client.infer(name, _inputs(a, b), model_version="3"), "NOT_FOUND")
    stats = client.get_inference_statistics(name, client_timeout=TIMEOUT_S).model_stats
    counts = {s.version: s.inference_stats.success.count for s in stats}
    assert counts == {"1": 1, "2": 2}, counts
    index = [m for m in client.get_model_repository_index().models if m.name == name]
    assert [(m.version, m.state) for m in index] == [("1", "READY"), ("2", "READY")], index

    # Back to the newest only: version 1 stops serving and leaves the statistics.
    config["version_policy"] = {"latest": {"num_versions": 1}}
    client.load_model(name, config=json.dumps(config), client_timeout=TIMEOUT_S)
    assert not client.is_model_ready(name, "1")
    _expect_status(lambda: client.infer(name, _inputs(a, b), model_version="1"), "NOT_FOUND")
    stats = client.get_inference_statistics(name, client_timeout=TIMEOUT_S).model_stats
    assert [s.version for s in stats] == ["2"], stats
    client.unload_model(name, client_timeout=TIMEOUT_S)
    client.close()
