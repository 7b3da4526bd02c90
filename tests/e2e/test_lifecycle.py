"""Lifecycle over real gRPC: SIGTERM drain, deadlines in the queue, cancellation, queue limits.

The slow model is the dense one (width 2048, 8 layers, a few ms a request on one core) on a
single instance, so a few dozen concurrent requests make a queue that lasts a measurable while.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_process import ServerProcess, start_server

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from conftest import MetricSamples, RepositoryFactory

WIDTH = 2048
TIMEOUT_S = 60.0
# Enough queued work (at a few ms each) to outlast a short deadline and a signal's handling.
QUEUE = 96
SERIAL_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 0
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
BOUNDED_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching { default_queue_policy { max_queue_size: 2 } }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
Scrape = Callable[[int], "MetricSamples"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `condition` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def dense_request(model: str) -> pb.ModelInferRequest:
    """One row of the dense model (shape [1, width] with or without a batch dimension)."""
    value = np.random.default_rng(len(model)).standard_normal((1, WIDTH)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, WIDTH])
    request.raw_input_contents.append(value.tobytes())
    return request


def assert_dense_response(response: pb.ModelInferResponse) -> None:
    assert [o.name for o in response.outputs] == ["y"]
    assert list(response.outputs[0].shape) == [1, WIDTH]
    assert len(response.raw_output_contents[0]) == 4 * WIDTH


def in_server(scrape: Scrape, server: ServerProcess, model: str, baseline: float) -> float:
    """Requests of `model` the server holds or has answered successfully, beyond `baseline`."""
    metrics = scrape(server.metrics_port)
    pending = metrics.value("trtserve_pending_requests", model=model, version="1")
    done = metrics.value("trtserve_requests_total", model=model, version="1", outcome="success")
    return pending + done - baseline


def successes(scrape: Scrape, server: ServerProcess, model: str) -> float:
    return scrape(server.metrics_port).value(
        "trtserve_requests_total", model=model, version="1", outcome="success"
    )


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=TIMEOUT_S)
    return reply.model_stats[0]


@pytest.fixture(scope="module")
def dense_repository(make_repository: RepositoryFactory, dense_model_file: Path) -> Path:
    return make_repository(
        {
            "serial": (SERIAL_CONFIG, dense_model_file),
            "bounded": (BOUNDED_CONFIG, dense_model_file),
        }
    )


@pytest.fixture(scope="module")
def dense_server(dense_repository: Path) -> Iterator[ServerProcess]:
    proc = start_server(["--repository", str(dense_repository)])
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def stub(dense_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(dense_server.address) as channel:
        service = pb_grpc.GRPCInferenceServiceStub(channel)
        for model in ("serial", "bounded"):
            service.ModelInfer(dense_request(model), timeout=TIMEOUT_S)  # warm up
        yield service


def flood(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, count: int
) -> list[grpc.Future[pb.ModelInferResponse]]:
    return [stub.ModelInfer.future(dense_request(model), timeout=TIMEOUT_S) for _ in range(count)]


def test_deadline_passing_in_the_queue(
    dense_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, scrape_metrics: Scrape
) -> None:
    before = statistics(stub, "serial")
    baseline = successes(scrape_metrics, dense_server, "serial")
    queued = flood(stub, "serial", QUEUE)
    wait_until(
        lambda: in_server(scrape_metrics, dense_server, "serial", baseline) == QUEUE,
        "the flood to reach the server",
    )
    late = stub.ModelInfer.future(dense_request("serial"), timeout=0.1)
    with pytest.raises(grpc.RpcError) as raised:
        late.result(timeout=TIMEOUT_S)
    error = raised.value
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (error.code(), error.details())
    # The late request waited behind the flood: part of it was still running.
    assert not all(f.done() for f in queued)
    for future in queued:
        assert_dense_response(future.result(timeout=TIMEOUT_S))

    after = statistics(stub, "serial")
    assert after.execution_count - before.execution_count == QUEUE, "the late request ran"
    assert successes(scrape_metrics, dense_server, "serial") - baseline == QUEUE
    assert after.inference_count - before.inference_count == QUEUE
    metrics = scrape_metrics(dense_server.metrics_port)
    assert metrics.value("trtserve_pending_requests", model="serial", version="1") == 0
    assert_dense_response(stub.ModelInfer(dense_request("serial"), timeout=TIMEOUT_S))


def test_cancelled_queued_request_is_not_counted_as_success(
    dense_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, scrape_metrics: Scrape
) -> None:
    before = statistics(stub, "serial")
    baseline = successes(scrape_metrics, dense_server, "serial")
    queued = flood(stub, "serial", QUEUE)
    late = stub.ModelInfer.future(dense_request("serial"), timeout=TIMEOUT_S)
    wait_until(
        lambda: in_server(scrape_metrics, dense_server, "serial", baseline) == QUEUE + 1,
        "every request to reach the server",
    )
    assert late.cancel()
    for future in queued:
        future.result(timeout=TIMEOUT_S)
    wait_until(
        lambda: (
            scrape_metrics(dense_server.metrics_port).value(
                "trtserve_pending_requests", model="serial", version="1"
            )
            == 0
        ),
        "the queue to empty",
    )

    after = statistics(stub, "serial")
    assert after.execution_count - before.execution_count == QUEUE, "the cancelled request ran"
    assert successes(scrape_metrics, dense_server, "serial") - baseline == QUEUE
    assert after.inference_count - before.inference_count == QUEUE
    assert after.inference_stats.success.count - before.inference_stats.success.count == QUEUE


def test_max_queue_size(
    dense_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, scrape_metrics: Scrape
) -> None:
    before = scrape_metrics(dense_server.metrics_port)
    futures = flood(stub, "bounded", 48)
    answered, refused = 0, []
    for future in futures:
        try:
            assert_dense_response(future.result(timeout=TIMEOUT_S))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error)
            refused.append(error.details() or "")
        else:
            answered += 1
    assert answered >= 1 and refused, (answered, refused)
    for message in refused:
        assert "'bounded'" in message and "max_queue_size 2" in message, message

    after = scrape_metrics(dense_server.metrics_port)
    exhausted = dict(model="bounded", version="1", outcome="resource_exhausted")
    counted = after.value("trtserve_requests_total", **exhausted) - before.value(
        "trtserve_requests_total", **exhausted
    )
    assert counted == len(refused)
    # Nothing stays queued: every accepted request was answered and left the queue.
    assert after.value("trtserve_pending_requests", model="bounded", version="1") == 0
    assert_dense_response(stub.ModelInfer(dense_request("bounded"), timeout=TIMEOUT_S))


def not_ready(address: str) -> bool:
    """Whether readiness and health say no (or the server no longer answers at all)."""
    with grpc.insecure_channel(address) as channel:
        try:
            ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                pb.ServerReadyRequest(), timeout=5
            )
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError as error:
            # A probe that races the listener's shutdown may be cancelled rather than refused.
            stopping = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert error.code() in stopping, (error.code(), error.details())
            return True
        return not ready.ready and health.status == health_pb2.HealthCheckResponse.NOT_SERVING


def refused(stub: pb_grpc.GRPCInferenceServiceStub) -> grpc.RpcError:
    try:
        stub.ModelInfer(dense_request("serial"), timeout=10)
    except grpc.RpcError as error:
        return error
    raise AssertionError("a request sent after SIGTERM was served")


def test_sigterm_drains_in_flight_requests_and_exits_0(
    make_repository: RepositoryFactory, dense_model_file: Path, scrape_metrics: Scrape
) -> None:
    root = make_repository({"serial": (SERIAL_CONFIG, dense_model_file)})
    proc = start_server(["--repository", str(root), "--grace-period-s", "5"])
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(dense_request("serial"), timeout=TIMEOUT_S)
            in_flight = flood(stub, "serial", QUEUE)
            wait_until(
                lambda: in_server(scrape_metrics, proc, "serial", 1) == QUEUE,
                "the in-flight requests to reach the server",
            )

            proc.process.send_signal(signal.SIGTERM)
            wait_until(lambda: not_ready(proc.address), "readiness to turn false")
            # New requests are refused, on a fresh connection and on the one in use, while
            # the requests sent before the signal are still being served.
            with grpc.insecure_channel(proc.address) as fresh:
                error = refused(pb_grpc.GRPCInferenceServiceStub(fresh))
                assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error)
            error = refused(stub)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error)
            assert not all(f.done() for f in in_flight), "the drain was over before the checks"

            for future in in_flight:
                assert_dense_response(future.result(timeout=TIMEOUT_S))
        assert proc.process.wait(timeout=30) == 0, "".join(proc.output[-20:])
        assert any("shutting down" in line for line in proc.output)
    finally:
        proc.kill()
