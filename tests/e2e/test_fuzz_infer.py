"""Thousands of malformed ModelInfer requests at one running server (hypothesis).

Each request must be answered in bounded time, with a response or a clean status: never
INTERNAL or UNKNOWN. A request that succeeds must get exactly the outputs its inputs call
for. Afterwards the process is alive and answers correctly, and it logged no traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import ServerProcess, start_server

from trtserve.protocol import datatypes, tensors
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

MODEL = "simple"
WIDTH = 16
MAX_BATCH = 8
CALL_TIMEOUT_S = 10.0
# Statuses a malformed request may get: anything else (INTERNAL, UNKNOWN, a deadline hit
# because the server hung) is a failure.
CLEAN = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    """A server of its own, so the fuzzing cannot disturb the shared server's other tests."""
    proc = start_server()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


# --- strategies -----------------------------------------------------------------------------

TENSOR_NAMES = st.one_of(
    st.sampled_from(["INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1", "", "input0", "INPUT0 "]),
    st.text(max_size=12),
)
DATATYPE_NAMES = st.one_of(
    st.sampled_from([*datatypes.NAMES, "FP32", "FP32", "", "fp32", "FLOAT", "TYPE_FP32", "FP8"]),
    st.text(max_size=8),
)
DIMS = st.one_of(
    st.integers(-3, 2 * WIDTH),
    st.sampled_from([WIDTH, MAX_BATCH, MAX_BATCH + 1, 2**31, 2**62, -(2**63), 2**63 - 1]),
)
SHAPES = st.one_of(
    st.lists(DIMS, max_size=5),
    st.tuples(st.integers(-1, MAX_BATCH + 2), st.sampled_from([WIDTH, WIDTH - 1, WIDTH + 1])).map(
        list
    ),
)
RAW = st.one_of(
    st.binary(max_size=160),
    # Plausible sizes reach the deeper checks: whole FP32 rows of the model's width.
    st.integers(0, MAX_BATCH + 1).map(lambda rows: bytes(4 * WIDTH * rows)),
)
PARAMETERS = st.dictionaries(
    st.text(max_size=10),
    st.one_of(
        st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
        st.text(max_size=10).map(lambda v: pb.InferParameter(string_param=v)),
        st.floats().map(lambda v: pb.InferParameter(double_param=v)),
        st.integers(0, 2**64 - 1).map(lambda v: pb.InferParameter(uint64_param=v)),
    ),
    max_size=3,
)
CONTENTS = st.one_of(
    st.none(),
    st.lists(st.floats(width=32), max_size=40).map(
        lambda v: pb.InferTensorContents(fp32_contents=v)
    ),
    st.lists(st.floats(), max_size=20).map(lambda v: pb.InferTensorContents(fp64_contents=v)),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20).map(
        lambda v: pb.InferTensorContents(int_contents=v)
    ),
    st.lists(st.integers(0, 2**64 - 1), max_size=20).map(
        lambda v: pb.InferTensorContents(uint64_contents=v)
    ),
    st.lists(st.booleans(), max_size=20).map(lambda v: pb.InferTensorContents(bool_contents=v)),
    st.lists(st.binary(max_size=8), max_size=20).map(
        lambda v: pb.InferTensorContents(bytes_contents=v)
    ),
)
MODEL_NAMES = st.one_of(
    st.sampled_from([MODEL] * 4 + ["", "Simple", "no_such_model", "../simple"]),
    st.text(max_size=10),
)
VERSIONS = st.one_of(
    st.sampled_from(["", "", "", "1", "2", "0", "-1", "01", "latest"]), st.text(max_size=6)
)


@st.composite
def input_tensors(draw: st.DrawFn) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(TENSOR_NAMES), datatype=draw(DATATYPE_NAMES), shape=draw(SHAPES)
    )
    for key, value in draw(PARAMETERS).items():
        tensor.parameters[key].CopyFrom(value)
    contents = draw(CONTENTS)
    if contents is not None:
        tensor.contents.CopyFrom(contents)
    return tensor


@st.composite
def random_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Every field drawn independently: mostly nonsense."""
    request = pb.ModelInferRequest(
        model_name=draw(MODEL_NAMES), model_version=draw(VERSIONS), id=draw(st.text(max_size=8))
    )
    request.inputs.extend(draw(st.lists(input_tensors(), max_size=4)))
    request.raw_input_contents.extend(draw(st.lists(RAW, max_size=4)))
    for name in draw(st.lists(TENSOR_NAMES, max_size=3)):
        request.outputs.add(name=name)
    for key, value in draw(PARAMETERS).items():
        request.parameters[key].CopyFrom(value)
    return request


def valid_request(batch: int, rng: np.random.Generator, typed: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    for name in ("INPUT0", "INPUT1"):
        value = rng.standard_normal((batch, WIDTH)).astype(np.float32)
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[batch, WIDTH])
        if typed:
            tensor.contents.fp32_contents.extend(value.reshape(-1).tolist())
        else:
            request.raw_input_contents.append(value.tobytes())
    return request


@st.composite
def mutated_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A valid request with one to three things broken: reaches the deep checks."""
    batch = draw(st.integers(1, MAX_BATCH + 1))
    typed = draw(st.booleans())
    request = valid_request(batch, np.random.default_rng(draw(st.integers(0, 2**32 - 1))), typed)
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(request.inputs) - 1)) if request.inputs else 0
        kind = draw(
            st.sampled_from(
                [
                    "datatype",
                    "shape",
                    "dim",
                    "raw",
                    "truncate",
                    "extend",
                    "drop_input",
                    "add_input",
                    "rename",
                    "contents",
                    "drop_raw",
                    "add_raw",
                    "output",
                    "version",
                    "parameters",
                    "nothing",
                ]
            )
        )
        tensor = request.inputs[index] if request.inputs else None
        if kind == "datatype" and tensor is not None:
            tensor.datatype = draw(DATATYPE_NAMES)
        elif kind == "shape" and tensor is not None:
            del tensor.shape[:]
            tensor.shape.extend(draw(SHAPES))
        elif kind == "dim" and tensor is not None and tensor.shape:
            tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(DIMS)
        elif kind == "raw" and index < len(request.raw_input_contents):
            request.raw_input_contents[index] = draw(RAW)
        elif kind == "truncate" and index < len(request.raw_input_contents):
            raw = request.raw_input_contents[index]
            request.raw_input_contents[index] = raw[: draw(st.integers(0, len(raw)))]
        elif kind == "extend" and index < len(request.raw_input_contents):
            request.raw_input_contents[index] += draw(st.binary(min_size=1, max_size=16))
        elif kind == "drop_input" and tensor is not None:
            del request.inputs[index]
        elif kind == "add_input":
            request.inputs.append(draw(input_tensors()))
        elif kind == "rename" and tensor is not None:
            tensor.name = draw(TENSOR_NAMES)
        elif kind == "contents" and tensor is not None:
            contents = draw(CONTENTS)
            if contents is None:
                tensor.ClearField("contents")
            else:
                tensor.contents.CopyFrom(contents)
        elif kind == "drop_raw" and request.raw_input_contents:
            del request.raw_input_contents[
                draw(st.integers(0, len(request.raw_input_contents) - 1))
            ]
        elif kind == "add_raw":
            request.raw_input_contents.append(draw(RAW))
        elif kind == "output":
            request.outputs.add(name=draw(TENSOR_NAMES))
        elif kind == "version":
            request.model_version = draw(VERSIONS)
        elif kind == "parameters":
            for key, value in draw(PARAMETERS).items():
                request.parameters[key].CopyFrom(value)
    return request


REQUESTS = st.one_of(random_requests(), mutated_requests())


# --- oracle ---------------------------------------------------------------------------------


def decoded_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The inputs as a correct server reads them (only called for a request that succeeded)."""
    arrays = {}
    for i, tensor in enumerate(request.inputs):
        if request.raw_input_contents:
            arrays[tensor.name] = tensors.from_raw(
                tensor.name, tensor.datatype, tensor.shape, request.raw_input_contents[i]
            )
        else:
            arrays[tensor.name] = tensors.from_contents(
                tensor.name, tensor.datatype, tensor.shape, tensor.contents
            )
    return arrays


def check_success(request: pb.ModelInferRequest, response: pb.ModelInferResponse) -> None:
    """A success must be a request the model accepts, answered exactly."""
    assert request.model_name == MODEL and request.model_version in ("", "1"), request
    assert sorted(t.name for t in request.inputs) == ["INPUT0", "INPUT1"], request
    arrays = decoded_inputs(request)
    a, b = arrays["INPUT0"], arrays["INPUT1"]
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, request
    assert a.ndim == 2 and 1 <= a.shape[0] <= MAX_BATCH and a.shape[1] == WIDTH, request
    expected = {"OUTPUT0": a + b, "OUTPUT1": a - b}
    wanted = [o.name for o in request.outputs] or list(expected)
    assert response.id == request.id and response.model_name == MODEL
    assert sorted(o.name for o in response.outputs) == sorted(set(wanted)), response.outputs
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        assert output.datatype == "FP32" and list(output.shape) == list(a.shape), output
        got = np.frombuffer(raw, np.float32).reshape(tuple(output.shape))
        np.testing.assert_array_equal(got, expected[output.name])


def check_error(error: grpc.RpcError) -> None:
    message = error.details() or ""
    assert error.code() in CLEAN, (error.code(), message)
    assert message and not message.startswith("internal error"), message


def infer_once(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> None:
    try:
        response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        check_error(error)
        return
    check_success(request, response)


def assert_healthy(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, log_from: int
) -> None:
    """Alive, answering exactly, and nothing unexpected in its log since `log_from`."""
    assert server.process.poll() is None, "".join(server.output[-40:])
    rng = np.random.default_rng(1)
    for batch in (1, 3, MAX_BATCH):
        request = valid_request(batch, rng, typed=batch == 3)
        check_success(request, stub.ModelInfer(request, timeout=CALL_TIMEOUT_S))
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
    log = "".join(server.output[log_from:])
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]


# --- tests ----------------------------------------------------------------------------------


def test_fuzz_model_infer(
    fuzz_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    log_from = len(fuzz_server.output)

    @settings(FUZZ, max_examples=1500)
    @given(REQUESTS)
    def run(request: pb.ModelInferRequest) -> None:
        infer_once(stub, request)

    run()
    assert_healthy(fuzz_server, stub, log_from)


def test_fuzz_stream_infer(
    fuzz_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Batches of malformed requests on one stream: one answer each, matched by id."""
    log_from = len(fuzz_server.output)

    @settings(FUZZ, max_examples=120)
    @given(st.lists(REQUESTS, min_size=1, max_size=8))
    def run(requests: list[pb.ModelInferRequest]) -> None:
        for i, request in enumerate(requests):
            request.id = f"fuzz-{i}"
        responses = list(stub.ModelStreamInfer(iter(requests), timeout=CALL_TIMEOUT_S))
        assert len(responses) == len(requests), responses
        by_id = {r.infer_response.id: r for r in responses}
        assert sorted(by_id) == sorted(r.id for r in requests), responses
        for request in requests:
            reply = by_id[request.id]
            if reply.error_message:
                assert not reply.error_message.startswith("internal error"), reply
            else:
                check_success(request, reply.infer_response)

    run()
    assert_healthy(fuzz_server, stub, log_from)


def decodes(data: bytes) -> bool:
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return False
    return True


def _flip(data: bytes, position: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    position %= len(data)
    return data[:position] + bytes([value]) + data[position + 1 :]


# Wire bytes of valid requests with bytes flipped, cut or appended: often still decodable.
MUTATED_WIRE = st.builds(
    lambda request, position, value, cut: _flip(request.SerializeToString(), position, value)[
        : max(cut, 1) if cut else None
    ],
    mutated_requests(),
    st.integers(0, 10_000),
    st.integers(0, 255),
    st.one_of(st.none(), st.integers(0, 400)),
)


def test_fuzz_decodable_garbage_bytes(fuzz_server: ServerProcess, channel: grpc.Channel) -> None:
    """Raw bytes sent as the serialized message that still parse as a ModelInferRequest."""
    log_from = len(fuzz_server.output)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", None, None)

    @settings(FUZZ, max_examples=400)
    @given(st.one_of(st.binary(max_size=64), MUTATED_WIRE).filter(decodes))
    def run(data: bytes) -> None:
        request = pb.ModelInferRequest.FromString(data)
        try:
            response = pb.ModelInferResponse.FromString(infer(data, timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as error:
            check_error(error)
            return
        check_success(request, response)

    run()
    assert_healthy(fuzz_server, pb_grpc.GRPCInferenceServiceStub(channel), log_from)


def test_fuzz_undecodable_garbage_bytes(fuzz_server: ServerProcess, channel: grpc.Channel) -> None:
    """Bytes that are no ModelInferRequest at all: INVALID_ARGUMENT, and no traceback logged."""
    log_from = len(fuzz_server.output)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", None, None)

    @settings(FUZZ, max_examples=200)
    @given(
        st.one_of(st.binary(min_size=1, max_size=256), MUTATED_WIRE).filter(
            lambda data: not decodes(data)
        )
    )
    def run(data: bytes) -> None:
        try:
            infer(data, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            check_error(error)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "ModelInferRequest" in (error.details() or ""), error.details()
            return
        raise AssertionError("undecodable bytes were answered with a response")

    run()
    assert_healthy(fuzz_server, pb_grpc.GRPCInferenceServiceStub(channel), log_from)
