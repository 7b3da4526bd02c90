"""gRPC health, server reflection and the Prometheus exporter of a real server.

The exporter and ModelStatistics are fed by the same recording calls, so after a known set of
requests their counts (and durations) must agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from server_process import ServerProcess, start_server

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from conftest import MetricSamples

MODEL = "simple"
WIDTH = 16
TIMEOUT_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BATCHES = (1, 2, 3, 8, 4)
FAILURES = 2
LATENCY_HISTOGRAMS = (
    "trtserve_request_duration_seconds",
    "trtserve_queue_duration_seconds",
    "trtserve_compute_input_duration_seconds",
    "trtserve_compute_infer_duration_seconds",
    "trtserve_compute_output_duration_seconds",
)
Scrape = Callable[[int], "MetricSamples"]


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[ServerProcess]:
    """A server of its own, so the counts below are exactly the requests of this module."""
    proc = start_server()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def channel(metrics_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(metrics_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def request(batch: int, datatype: str = "FP32") -> pb.ModelInferRequest:
    value = np.ones((batch, WIDTH), np.float32)
    message = pb.ModelInferRequest(model_name=MODEL)
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype=datatype, shape=value.shape)
        message.raw_input_contents.append(value.tobytes())
    return message


def health(channel: grpc.Channel, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
    )
    return int(reply.status)


def wait_for_health(channel: grpc.Channel, service: str, status: int) -> None:
    # Health follows model state changes asynchronously; poll for a bounded while.
    deadline = time.monotonic() + 10
    while health(channel, service) != status:
        assert time.monotonic() < deadline, f"health of {service!r} never became {status}"
        time.sleep(0.01)


def test_health_overall_and_per_model(channel: grpc.Channel) -> None:
    assert health(channel, "") == SERVING
    # Triton answers its service's name too; Triton's clients and probes ask for it.
    assert health(channel, "inference.GRPCInferenceService") == SERVING
    assert health(channel, MODEL) == SERVING
    with pytest.raises(grpc.RpcError) as raised:
        health(channel, "no_such_model")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services, services
    # A private pool: the descriptors come from the server, not from our generated modules.
    service = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
    methods = {m.name for m in service.methods}
    assert {"ModelInfer", "ModelStreamInfer", "ModelStatistics", "RepositoryModelLoad"} <= methods
    infer = service.methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"


def test_metrics_agree_with_model_statistics(
    metrics_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, scrape_metrics: Scrape
) -> None:
    for batch in BATCHES:
        stub.ModelInfer(request(batch), timeout=TIMEOUT_S)
    for _ in range(FAILURES):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request(1, "INT32"), timeout=TIMEOUT_S)

    metrics = scrape_metrics(metrics_server.metrics_port)
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=TIMEOUT_S)
    stats = reply.model_stats[0]
    inference = stats.inference_stats
    labels = {"model": MODEL, "version": "1"}

    def value(name: str, **extra: str) -> float:
        return metrics.value(name, **labels, **extra)

    assert "trtserve_requests_total{" in metrics.text
    assert value("trtserve_requests_total", outcome="success") == len(BATCHES)
    assert value("trtserve_requests_total", outcome="invalid_argument") == FAILURES
    assert inference.success.count == len(BATCHES) and inference.fail.count == FAILURES
    assert stats.inference_count == sum(BATCHES)

    for histogram in LATENCY_HISTOGRAMS:
        assert value(f"{histogram}_count") > 0, histogram
        assert value(f"{histogram}_bucket", le="+Inf") == value(f"{histogram}_count"), histogram
    assert value("trtserve_request_duration_seconds_count") == len(BATCHES) + FAILURES
    total_ns = inference.success.ns + inference.fail.ns
    assert value("trtserve_request_duration_seconds_sum") == pytest.approx(total_ns / 1e9)
    assert value("trtserve_queue_duration_seconds_count") == inference.queue.count
    assert value("trtserve_queue_duration_seconds_sum") == pytest.approx(inference.queue.ns / 1e9)
    # Compute histograms observe once per executed batch.
    for phase in ("input", "infer", "output"):
        assert value(f"trtserve_compute_{phase}_duration_seconds_count") == stats.execution_count
    assert value("trtserve_batch_size_count") == stats.execution_count
    assert value("trtserve_batch_size_sum") == sum(BATCHES)
    executions = {s.batch_size: s.compute_infer.count for s in stats.batch_stats}
    assert sum(executions.values()) == stats.execution_count
    infer_ns = sum(s.compute_infer.ns for s in stats.batch_stats)
    assert value("trtserve_compute_infer_duration_seconds_sum") == pytest.approx(infer_ns / 1e9)

    assert value("trtserve_pending_requests") == 0
    assert value("trtserve_model_state", state="READY") == 1
    for state in ("LOADING", "UNAVAILABLE", "UNLOADING"):
        assert value("trtserve_model_state", state=state) == 0, state


def test_unload_and_load_follow_in_health_and_metrics(
    metrics_server: ServerProcess,
    channel: grpc.Channel,
    stub: pb_grpc.GRPCInferenceServiceStub,
    scrape_metrics: Scrape,
) -> None:
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=30)
    wait_for_health(channel, MODEL, NOT_SERVING)
    assert health(channel, "") == SERVING
    state = scrape_metrics(metrics_server.metrics_port)
    assert state.value("trtserve_model_state", model=MODEL, version="1", state="UNAVAILABLE") == 1
    assert state.value("trtserve_model_state", model=MODEL, version="1", state="READY") == 0

    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=30)
    wait_for_health(channel, MODEL, SERVING)
    state = scrape_metrics(metrics_server.metrics_port)
    assert state.value("trtserve_model_state", model=MODEL, version="1", state="READY") == 1
    stub.ModelInfer(request(1), timeout=TIMEOUT_S)


def test_unknown_model_names_and_versions_create_no_metrics(
    metrics_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, scrape_metrics: Scrape
) -> None:
    names = [f"made_up_{i}" for i in range(3)]
    versions = ["7", "latest"]
    for name in names:
        message = request(1)
        message.model_name = name
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(message, timeout=TIMEOUT_S)
    for version in versions:
        message = request(1)
        message.model_version = version
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(message, timeout=TIMEOUT_S)
    text = scrape_metrics(metrics_server.metrics_port).text
    every = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=TIMEOUT_S).model_stats
    assert [(s.name, s.version) for s in every] == [(MODEL, "1")], every
    for name in names:
        assert name not in text, f"/metrics has series for unknown model {name!r}"
    for version in versions:
        assert f'version="{version}"' not in text, f"/metrics has series for version {version!r}"
