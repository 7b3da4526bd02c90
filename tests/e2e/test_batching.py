"""Dynamic batching over real gRPC: requests are packed, and results are split back exactly.

Each request carries distinct random inputs and a batch size of 1 to 4; whatever batch the
server packs it into, its response must be the sum and difference of its own inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from server_process import ServerProcess, start_server

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.default_model import build_simple_model

if TYPE_CHECKING:
    from conftest import RepositoryFactory

WIDTH = 16
TIMEOUT_S = 60.0
REQUESTS = 120
# A long window: requests arriving together are packed up to max_batch_size.
BATCHED_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""
# No batch dimension: every request runs alone, whatever its shape.
SERIAL_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1, 16 ] },
  { name: "INPUT1", data_type: TYPE_FP32, dims: [ -1, 16 ] }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""


@dataclass(frozen=True)
class Sent:
    request: pb.ModelInferRequest
    a: np.ndarray
    b: np.ndarray


@pytest.fixture(scope="module")
def batching_server(make_repository: RepositoryFactory) -> Iterator[ServerProcess]:
    model = build_simple_model()
    root = make_repository({"batched": (BATCHED_CONFIG, model), "serial": (SERIAL_CONFIG, model)})
    proc = start_server(["--repository", str(root)])
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def stub(batching_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(batching_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def make_requests(model: str, count: int, seed: int) -> list[Sent]:
    rng = np.random.default_rng(seed)
    sent = []
    for i in range(count):
        batch = int(rng.integers(1, 5))
        a = rng.standard_normal((batch, WIDTH)).astype(np.float32)
        b = rng.standard_normal((batch, WIDTH)).astype(np.float32)
        request = pb.ModelInferRequest(model_name=model, id=f"{model}-{i}")
        for name, value in (("INPUT0", a), ("INPUT1", b)):
            request.inputs.add(name=name, datatype="FP32", shape=value.shape)
            request.raw_input_contents.append(value.tobytes())
        sent.append(Sent(request, a, b))
    return sent


def send_all_at_once(stub: pb_grpc.GRPCInferenceServiceStub, sent: list[Sent]) -> None:
    """Send every request concurrently; check each response against its own inputs."""
    futures = [stub.ModelInfer.future(s.request, timeout=TIMEOUT_S) for s in sent]
    for s, future in zip(sent, futures, strict=True):
        response = future.result(timeout=TIMEOUT_S)
        assert response.id == s.request.id
        outputs = {
            o.name: np.frombuffer(raw, np.float32).reshape(tuple(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }
        np.testing.assert_array_equal(outputs["OUTPUT0"], s.a + s.b, err_msg=s.request.id)
        np.testing.assert_array_equal(outputs["OUTPUT1"], s.a - s.b, err_msg=s.request.id)


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=TIMEOUT_S)
    assert [s.name for s in reply.model_stats] == [model], reply
    return reply.model_stats[0]


def test_concurrent_requests_are_packed_and_split_back_exactly(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    sent = make_requests("batched", REQUESTS, seed=1)
    send_all_at_once(stub, sent)
    stats = statistics(stub, "batched")
    rows = sum(len(s.a) for s in sent)
    assert stats.inference_stats.success.count == REQUESTS
    assert stats.inference_count == rows
    # Packed: fewer executions than requests (and so than inferences).
    assert 0 < stats.execution_count < REQUESTS < stats.inference_count, stats
    # Every execution is one batch; together they hold every row that was sent, none twice.
    sizes = {s.batch_size: s.compute_infer.count for s in stats.batch_stats}
    assert sum(sizes.values()) == stats.execution_count, sizes
    assert sum(size * n for size, n in sizes.items()) == rows, sizes
    assert max(sizes) <= 8 and any(size > 4 for size in sizes), sizes


def test_model_without_batch_dimension_runs_requests_one_by_one(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    sent = make_requests("serial", REQUESTS // 2, seed=2)
    send_all_at_once(stub, sent)
    stats = statistics(stub, "serial")
    assert stats.inference_count == stats.execution_count == REQUESTS // 2, stats


def test_inference_count_counts_every_row_of_a_batch(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # As Triton defines it (and perf_analyzer reads it): a request of batch size 4 adds 4.
    sent = [s for s in make_requests("batched", 40, seed=4) if len(s.a) == 4][:3]
    assert len(sent) == 3
    before = statistics(stub, "batched")
    send_all_at_once(stub, sent)
    after = statistics(stub, "batched")
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 12, (before, after)
