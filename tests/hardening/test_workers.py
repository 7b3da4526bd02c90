"""`serve --workers 2`: one server to its clients, whichever worker a connection reaches.

Every check runs over many fresh TCP connections (a local subchannel pool per channel, so none
is reused), which the kernel spreads over the two workers' shared port; ServerMetadata's
trailing metadata names the worker that answered, and each test asserts that both did.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from rest_calls import add_infer_body, call
from served import wait_for
from server_process import ServerProcess, run_cli, start_server
from tiny_models import WIDTH, add_config, add_constant_model, add_request, output_of, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from conftest import MetricSamples, RepositoryFactory

WORKERS = 2
CONNECTIONS = 30
TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0
# A channel that opens its own connection rather than reusing one of the process's pool.
FRESH = [("grpc.use_local_subchannel_pool", 1)]
Scrape = Callable[[int], "MetricSamples"]
# The dense model (conftest's dense_model_file) on one instance: a few ms a request, so the
# requests of several connections make a queue in each worker that outlasts the signal.
DENSE_WIDTH = 2048
QUEUE = 48
SERIAL_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 0
instance_group [ { count: 1, kind: KIND_CPU } ]
"""


def dense_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="serial")
    request.inputs.add(name="x", datatype="FP32", shape=[1, DENSE_WIDTH])
    request.raw_input_contents.append(np.ones((1, DENSE_WIDTH), np.float32).tobytes())
    return request


class Connection:
    """One fresh TCP connection to the server, and the worker it reached."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        _reply, call = self.stub.ServerMetadata.with_call(
            pb.ServerMetadataRequest(), timeout=TIMEOUT_S
        )
        workers = [m.value for m in call.trailing_metadata() if m.key == "trtserve-worker"]
        self.worker = int(workers[0])

    def infer_plus(self, model: str, constant: float, version: str = "") -> None:
        """Infer once on an add-constant model and check the answer."""
        request, x = add_request(model)
        request.model_version = version
        response = self.stub.ModelInfer(request, timeout=TIMEOUT_S)
        np.testing.assert_array_equal(output_of(response), x + constant)

    def refused(self, model: str) -> grpc.StatusCode:
        request, _x = add_request(model)
        with pytest.raises(grpc.RpcError) as raised:
            self.stub.ModelInfer(request, timeout=TIMEOUT_S)
        return raised.value.code()


def each_connection(address: str, count: int = CONNECTIONS) -> Iterator[Connection]:
    """`count` fresh connections, one at a time; fails unless every worker was reached."""
    reached = set()
    for _ in range(count):
        connection = Connection(address)
        try:
            yield connection
        finally:
            connection.channel.close()
        reached.add(connection.worker)
    assert reached == set(range(WORKERS)), f"{count} connections reached workers {reached}"


def load_request(name: str, constant: float) -> pb.RepositoryModelLoadRequest:
    """A load that writes an add-constant model's config and version 1 file."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    request.parameters["config"].string_param = add_config(name)
    request.parameters["file:1/model.onnx"].bytes_param = add_constant_model(constant)
    return request


def worker_pids(server: ServerProcess) -> list[int]:
    for line in server.output:
        if match := re.search(r"workers serving, pids \[([\d, ]+)\]", line):
            return [int(p) for p in match.group(1).split(",")]
    raise AssertionError("the supervisor did not log its workers' pids")


def wait_for_line(server: ServerProcess, text: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in server.output):
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise AssertionError(f"no '{text}' in the server's output:\n{''.join(server.output)}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("workers-repository")
    write_model(root, "plus1", 1, add_constant_model(1.0))
    server = start_server(
        ["--repository", str(root), "--workers", str(WORKERS)], timeout=START_TIMEOUT_S
    )
    yield server
    assert server.terminate() == 0, "".join(server.output[-30:])


def test_a_model_loaded_through_one_connection_serves_on_every_connection(
    cluster: ServerProcess,
) -> None:
    with grpc.insecure_channel(cluster.address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            load_request("plus2", 2.0), timeout=TIMEOUT_S
        )
    for connection in each_connection(cluster.address):
        ready = connection.stub.ModelReady(pb.ModelReadyRequest(name="plus2"), timeout=TIMEOUT_S)
        assert ready.ready, f"plus2 not ready on worker {connection.worker}"
        connection.infer_plus("plus2", 2.0)

    with grpc.insecure_channel(cluster.address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="plus2"), timeout=TIMEOUT_S
        )
    for connection in each_connection(cluster.address):
        assert connection.refused("plus2") == grpc.StatusCode.UNAVAILABLE
        ready = connection.stub.ModelReady(pb.ModelReadyRequest(name="plus2"), timeout=TIMEOUT_S)
        assert not ready.ready


def test_a_load_that_fails_leaves_every_worker_on_the_previous_version(
    cluster: ServerProcess,
) -> None:
    broken = pb.RepositoryModelLoadRequest(model_name="plus1")
    broken.parameters["config"].string_param = add_config("plus1")
    broken.parameters["file:2/model.onnx"].bytes_param = b"not an onnx model"
    with grpc.insecure_channel(cluster.address) as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(broken, timeout=TIMEOUT_S)
    assert "worker" in (raised.value.details() or ""), raised.value.details()
    for connection in each_connection(cluster.address):
        connection.infer_plus("plus1", 1.0)
        index = connection.stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S)
        [entry] = [m for m in index.models if m.name == "plus1"]
        assert (entry.version, entry.state) == ("1", "READY")


def test_statistics_and_metrics_sum_over_the_workers(
    cluster: ServerProcess, scrape_metrics: Scrape
) -> None:
    def counts(stub: pb_grpc.GRPCInferenceServiceStub) -> tuple[int, int, int]:
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name="plus1"), timeout=TIMEOUT_S)
        stats = reply.model_stats[0]
        return (stats.inference_stats.success.count, stats.inference_count, stats.execution_count)

    def views() -> set[tuple[int, int, int]]:
        """What every worker reports (each writes its own counts before it reads)."""
        return {counts(connection.stub) for connection in each_connection(cluster.address)}

    def metric() -> float:
        return scrape_metrics(cluster.metrics_port).value(
            "trtserve_requests_total", model="plus1", version="1", outcome="success"
        )

    # Workers publish their counts to each other every few tens of milliseconds: once every
    # worker reports the same, each one's counts are in the files.
    wait_for(lambda: len(views()) == 1, "every worker to report the same statistics")
    [before] = views()
    metric_before = metric()
    sent = 0
    for connection in each_connection(cluster.address):
        for _ in range(2):
            connection.infer_plus("plus1", 1.0)
            sent += 1
    expected = tuple(n + sent for n in before)
    wait_for(lambda: views() == {expected}, f"every worker to report {expected}")
    wait_for(lambda: metric() - metric_before == sent, f"/metrics to count {sent} more")


def test_a_region_registered_through_one_connection_is_known_to_every_worker(
    cluster: ServerProcess,
) -> None:
    region = shared_memory.SharedMemory(create=True, size=4 * WIDTH)
    try:
        x = np.arange(WIDTH, dtype=np.float32).reshape(1, WIDTH) * 3
        np.ndarray(x.shape, np.float32, buffer=region.buf)[:] = x
        with grpc.insecure_channel(cluster.address) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(
                    name="rows", key=f"/{region.name}", offset=0, byte_size=4 * WIDTH
                ),
                timeout=TIMEOUT_S,
            )
        request = pb.ModelInferRequest(model_name="plus1")
        tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, WIDTH])
        tensor.parameters["shared_memory_region"].string_param = "rows"
        tensor.parameters["shared_memory_byte_size"].int64_param = 4 * WIDTH
        for connection in each_connection(cluster.address):
            response = connection.stub.ModelInfer(request, timeout=TIMEOUT_S)
            np.testing.assert_array_equal(output_of(response), x + 1)

        with grpc.insecure_channel(cluster.address) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryUnregister(
                pb.SystemSharedMemoryUnregisterRequest(name="rows"), timeout=TIMEOUT_S
            )
        for connection in each_connection(cluster.address):
            status = connection.stub.SystemSharedMemoryStatus(
                pb.SystemSharedMemoryStatusRequest(), timeout=TIMEOUT_S
            )
            assert "rows" not in status.regions
            with pytest.raises(grpc.RpcError) as raised:
                connection.stub.ModelInfer(request, timeout=TIMEOUT_S)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        region.close()
        region.unlink()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_on_the_port_is_refused_naming_it(
    cluster: ServerProcess, workers: str
) -> None:
    done = run_cli(
        "serve",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(cluster.grpc_port),
        "--metrics-port",
        "-1",
        "--workers",
        workers,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"127.0.0.1:{cluster.grpc_port}" in done.stdout, done.stdout + done.stderr
    assert "serving gRPC" not in done.stdout


def test_a_killed_worker_comes_back_serving_what_the_others_serve(cluster: ServerProcess) -> None:
    # Changes made after the start: a restarted worker must take them from the others, not
    # from the repository (which still holds plus1 and would not say plus3's state). plus3
    # serves two versions at once: +3 as version 1, +4 as version 2.
    plus3 = load_request("plus3", 3.0)
    config = json.loads(add_config("plus3"))
    config["version_policy"] = {"latest": {"num_versions": 2}}
    plus3.parameters["config"].string_param = json.dumps(config)
    plus3.parameters["file:2/model.onnx"].bytes_param = add_constant_model(4.0)
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelLoad(plus3, timeout=TIMEOUT_S)
        stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="plus1"), timeout=TIMEOUT_S
        )
    victim = worker_pids(cluster)[1]
    os.kill(victim, signal.SIGKILL)
    # The survivor holds the port alone meanwhile: the server stays ready. A connection the
    # kernel handed the dying worker is reset; a client retries it (wait_for_ready).
    for _ in range(10):
        with grpc.insecure_channel(cluster.address, options=FRESH) as channel:
            ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                pb.ServerReadyRequest(), timeout=TIMEOUT_S, wait_for_ready=True
            )
            assert ready.ready
    wait_for_line(cluster, "worker 1 is back")

    for connection in each_connection(cluster.address):
        assert connection.stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready
        connection.infer_plus("plus3", 3.0, version="1")
        connection.infer_plus("plus3", 4.0, version="2")
        connection.infer_plus("plus3", 4.0)
        assert connection.refused("plus1") == grpc.StatusCode.UNAVAILABLE


def test_sigterm_drains_every_worker(
    make_repository: RepositoryFactory, dense_model_file: Path, scrape_metrics: Scrape
) -> None:
    root = make_repository({"serial": (SERIAL_CONFIG, dense_model_file)})
    server = start_server(
        ["--repository", str(root), "--workers", str(WORKERS), "--grace-period-s", "20"],
        timeout=START_TIMEOUT_S,
    )
    try:
        connections = [Connection(server.address) for _ in range(8)]
        assert {c.worker for c in connections} == set(range(WORKERS))
        in_flight = [
            c.stub.ModelInfer.future(dense_request(), timeout=TIMEOUT_S)
            for c in connections
            for _ in range(QUEUE)
        ]

        def held() -> float:
            metrics = scrape_metrics(server.metrics_port)
            labels = {"model": "serial", "version": "1"}
            return metrics.value("trtserve_pending_requests", **labels) + metrics.value(
                "trtserve_requests_total", outcome="success", **labels
            )

        deadline = time.monotonic() + TIMEOUT_S
        while held() < len(in_flight):  # every request reached a worker
            assert time.monotonic() < deadline, f"{held()} of {len(in_flight)} reached the server"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        for future in in_flight:
            response = future.result(timeout=TIMEOUT_S)
            assert len(response.raw_output_contents[0]) == 4 * DENSE_WIDTH
        assert server.process.wait(timeout=60) == 0, "".join(server.output[-30:])
        assert any("draining every worker" in line for line in server.output)
        for connection in connections:
            connection.channel.close()
    finally:
        server.kill()


def test_rest_reaches_every_worker_and_a_load_through_it_serves_on_all(
    cluster: ServerProcess,
) -> None:
    address = cluster.http_address
    body = {"parameters": {"config": add_config("plus5")}}
    body["parameters"]["file:1/model.onnx"] = base64.b64encode(add_constant_model(5.0)).decode()
    assert call(address, "POST", "/v2/repository/models/plus5/load", body).status == 200
    reached = set()
    for _ in range(CONNECTIONS):  # every call is a fresh connection
        metadata = call(address, "GET", "/v2")
        reached.add(int(metadata.headers["trtserve-worker"]))
        answer = call(address, "POST", "/v2/models/plus5/infer", add_infer_body(WIDTH))
        assert answer.status == 200, answer.body
        assert answer.json()["outputs"][0]["data"] == [5.0, 6.0, 7.0, 8.0]
    assert reached == set(range(WORKERS)), reached
    assert call(address, "POST", "/v2/repository/models/plus5/unload").status == 200
