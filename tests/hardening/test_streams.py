"""ModelStreamInfer against a real server: bad messages and clients that do not read.

A stream answers every request it read, one response each, whatever the others do; and a
client that stops reading replies stops the server reading its requests (flow control), so
the server does not execute and hold replies without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from server_process import ServerProcess, start_server

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

TIMEOUT_S = 30.0
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
# Bytes that do not parse as a ModelInferRequest: a bad varint, wire type 7, a field whose
# declared length runs past the end.
GARBAGE = (b"\xff" * 11, b"\x0f", b"\x0a\x7fab")
# HTTP/2's initial flow-control window (RFC 9113, 6.9.2), which gRPC keeps when BDP probing is
# off: the most reply bytes the server can hand to a client that reads nothing.
HTTP2_INITIAL_WINDOW = 65_535
GRPC_FRAME_HEADER = 5  # compressed flag and length before each message
CAP = 4
WIDE = 1024  # FP32 outputs per request of model `wide`: 4 KiB replies
WIDE_CONFIG = f"""\
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 1 ] }} ]
output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ {WIDE} ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""


def simple_request(request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple", id=request_id)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return request


def raw_stream(channel: grpc.Channel) -> Callable[..., Iterator[pb.ModelStreamInferResponse]]:
    """ModelStreamInfer taking serialized requests, so a client can send any bytes."""
    return channel.stream_stream(  # type: ignore[no-any-return]
        STREAM_METHOD,
        request_serializer=lambda data: data,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def test_garbage_messages_get_an_error_each_and_lose_no_response(
    server: ServerProcess,
) -> None:
    for data in GARBAGE:
        with pytest.raises(DecodeError):
            pb.ModelInferRequest.FromString(data)
    messages: list[bytes] = []
    for i in range(30):
        messages.append(simple_request(f"r{i}").SerializeToString())
        if i % 10 == 5:
            messages.append(GARBAGE[i // 10])
    with grpc.insecure_channel(server.address) as channel:
        call = raw_stream(channel)(iter(messages), timeout=TIMEOUT_S)
        responses = list(call)
        assert call.code() == grpc.StatusCode.OK

    answered = [r for r in responses if not r.error_message]
    errors = [r for r in responses if r.error_message]
    assert sorted(r.infer_response.id for r in answered) == sorted(f"r{i}" for i in range(30))
    expected_sum = 2 * np.arange(16, dtype=np.float32)
    for r in answered:
        out = np.frombuffer(r.infer_response.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(out, expected_sum)
    assert len(errors) == len(GARBAGE), errors
    for r in errors:
        assert r.infer_response.id == "" and r.infer_response.model_name == ""
        assert "expected a serialized inference.ModelInferRequest" in r.error_message
        assert "do not parse" in r.error_message


# --- back-pressure ----------------------------------------------------------------------------


def wide_model() -> bytes:
    """Y[N, WIDE] = X[N, 1] + 0: a 4-byte input, a 4 KiB output."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", WIDE])
    zeros = numpy_helper.from_array(np.zeros((WIDE,), np.float32), name="Z")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "Z"], ["Y"])], "wide", [x], [y], [zeros]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def wide_request(i: int) -> pb.ModelInferRequest:
    # Ids of one width: every reply has the same size.
    request = pb.ModelInferRequest(model_name="wide", id=f"{i:04d}")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32([i]).tobytes())
    return request


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository: Path = tmp_path_factory.mktemp("streams") / "repository"
    (repository / "wide" / "1").mkdir(parents=True)
    (repository / "wide" / "config.pbtxt").write_text(WIDE_CONFIG)
    (repository / "wide" / "1" / "model.onnx").write_bytes(wide_model())
    # Through the environment, as a deployment would set it.
    process = start_server(
        ["--repository", str(repository)], env={"TRTSERVE_MAX_STREAM_IN_FLIGHT": str(CAP)}
    )
    yield process
    assert process.terminate() == 0


def executed(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="wide"), timeout=TIMEOUT_S)
    return int(stats.model_stats[0].inference_stats.success.count)


def test_a_client_that_does_not_read_stops_the_server(capped: ServerProcess) -> None:
    """The server executes at most CAP + what the client's flow-control window takes.

    A request holds one of the CAP slots from being read until gRPC has sent its reply, and
    gRPC completes a send only once the whole message fits the client's window. With BDP
    probing off the client never widens that window past HTTP/2's initial 65,535 bytes, so
    at most floor(65535 / reply size on the wire) replies leave the server; every other
    executed request holds a slot.
    """
    count = 400
    quiet = grpc.insecure_channel(capped.address, options=[("grpc.http2.bdp_probe", 0)])
    observer = grpc.insecure_channel(capped.address)
    stub = pb_grpc.GRPCInferenceServiceStub(observer)  # type: ignore[no-untyped-call]
    # The stream's replies are this reply in a ModelStreamInferResponse.
    unary = stub.ModelInfer(wide_request(count), timeout=TIMEOUT_S)
    reply_wire = GRPC_FRAME_HEADER + pb.ModelStreamInferResponse(infer_response=unary).ByteSize()
    bound = CAP + HTTP2_INITIAL_WINDOW // reply_wire
    assert bound < count // 4  # so a server without back-pressure fails clearly
    before = executed(stub)
    requests = (wide_request(i) for i in range(count))
    try:
        call = pb_grpc.GRPCInferenceServiceStub(quiet).ModelStreamInfer(  # type: ignore[no-untyped-call]
            requests, timeout=TIMEOUT_S
        )
        # Wait (bounded) until the server has run as far as flow control lets it.
        for _ in range(2000):
            done = executed(stub) - before
            assert done <= bound, f"executed {done} requests, expected at most {bound}"
            if done == bound:
                break
        assert done == bound, f"executed {done}, expected the window to fill to {bound}"
        # A unary request behind them on the same model: whatever the stream had queued has
        # run by the time it is answered.
        stub.ModelInfer(wide_request(-1), timeout=TIMEOUT_S)
        assert executed(stub) - before == bound + 1

        ids = [r.infer_response.id for r in call if not r.error_message]
        assert call.code() == grpc.StatusCode.OK
        assert sorted(ids) == [f"{i:04d}" for i in range(count)]
    finally:
        quiet.close()
        observer.close()
