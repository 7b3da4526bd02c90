"""The load generator's summary arithmetic, on known latencies."""

from __future__ import annotations

import json

import pytest

from trtserve.client.bench import _message_parts, run_load, summarize
from trtserve.client.bench_regions import ALIGNMENT, output_sizes, plan_layout
from trtserve.protocol import grpc_service_pb2 as pb


def test_percentiles_and_throughput_of_known_latencies() -> None:
    # 1 ms .. 100 ms: numpy's linear percentile of 1..100 is 1 + 0.99 * (p) exactly.
    latencies = [i * 1_000_000 for i in range(1, 101)]
    result = summarize("m", 4, latencies, {"UNAVAILABLE": 3}, elapsed_s=2.0)
    assert result.count == 100
    assert result.throughput == 50.0
    assert result.p50_ms == pytest.approx(50.5)
    assert result.p90_ms == pytest.approx(90.1)
    assert result.p99_ms == pytest.approx(99.01)
    assert result.mean_ms == pytest.approx(50.5)
    assert result.errors == {"UNAVAILABLE": 3}


def test_order_does_not_matter_and_units_are_ms() -> None:
    result = summarize("m", 1, [3_000_000, 1_000_000, 2_000_000], {}, elapsed_s=0.5)
    assert (result.p50_ms, result.throughput) == (2.0, 6.0)


def test_no_successes_gives_no_latency() -> None:
    result = summarize("m", 2, [], {"INVALID_ARGUMENT": 5}, elapsed_s=1.0)
    assert result.count == 0
    assert result.throughput == 0.0
    assert result.p50_ms is None and result.p99_ms is None
    parsed = json.loads(result.to_json())
    assert parsed["p99_ms"] is None
    assert parsed["errors"] == {"INVALID_ARGUMENT": 5}
    assert "n/a" in result.summary()


def test_json_holds_every_field() -> None:
    result = summarize("simple", 8, [1_000_000] * 4, {}, elapsed_s=1.0)
    parsed = json.loads(result.to_json())
    assert parsed == {
        "model": "simple",
        "concurrency": 8,
        "count": 4,
        "errors": {},
        "elapsed_s": 1.0,
        "throughput": 4.0,
        "mean_ms": 1.0,
        "p50_ms": 1.0,
        "p90_ms": 1.0,
        "p99_ms": 1.0,
        "shared_memory": "none",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0, "requests": 1}, "concurrency must be at least 1"),
        ({"concurrency": 1}, "give a request count or a duration"),
        ({"concurrency": 1, "requests": 0}, "requests must be at least 1"),
        ({"concurrency": 1, "duration_s": 0.0}, "duration_s must be positive"),
        ({"concurrency": 2, "requests": 9, "processes": 3}, "processes must be between 1 and"),
        ({"concurrency": 4, "requests": 2, "processes": 3}, "requests must be at least 3"),
    ],
)
def test_bad_limits_are_refused_before_connecting(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_load("127.0.0.1:1", "m", [], **kwargs)  # type: ignore[arg-type]


def test_bad_shared_memory_kind_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="shared_memory must be one of none, system, cuda"):
        run_load("127.0.0.1:1", "m", [], concurrency=1, requests=1, shared_memory="posix")  # type: ignore[arg-type]


def test_layout_aligns_each_tensor_after_the_last() -> None:
    layout = plan_layout([("A", 10), ("B", 64)], [("Y", 1), ("Z", 0)])
    assert layout.inputs == {"A": 0, "B": 64}
    assert layout.outputs == {"Y": (128, 1), "Z": (192, 0)}
    assert layout.byte_size == 192
    assert ALIGNMENT == 64


def test_layout_of_nothing_is_one_byte() -> None:
    # A mapping cannot be empty.
    assert plan_layout([], []).byte_size == 1


def test_output_sizes_leave_bytes_outputs_out() -> None:
    response = pb.ModelInferResponse()
    response.outputs.add(name="Y", datatype="FP16", shape=[2, 3])
    response.outputs.add(name="S", datatype="BYTES", shape=[2])
    response.outputs.add(name="B", datatype="BOOL", shape=[5])
    assert output_sizes(response) == [("Y", 12), ("B", 5)]


def test_each_process_gets_its_tasks_messages_in_order() -> None:
    messages = [pb.ModelInferRequest(id=str(i)) for i in range(5)]
    parts = _message_parts(messages, [2, 2, 1])
    assert [[m.id for m in p] for p in parts] == [["0", "1"], ["2", "3"], ["4"]]
    shared = _message_parts(messages[:1], [3, 2])
    assert [[m.id for m in p] for p in shared] == [["0"], ["0"]]
