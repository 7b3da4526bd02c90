"""Bad input over real gRPC: each gets the right status and a message naming what was wrong.

Every malformed request must be answered with INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION or RESOURCE_EXHAUSTED and a message that names the tensor or model, the
expected and the received value; the server keeps answering correct requests afterwards.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from server_process import ServerProcess, start_server

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.default_model import build_simple_model, write_default_repository

MODEL = "simple"
WIDTH = 16
TIMEOUT_S = 10.0
MAX_MESSAGE_MB = 1
GARBAGE = b"this is not an ONNX model \x00\xff" * 8
StatusCode = grpc.StatusCode


def simple_config(name: str) -> str:
    """config.json text for a copy of the `simple` model named `name`."""
    tensors = [{"name": n, "data_type": "TYPE_FP32", "dims": [WIDTH]} for n in ("INPUT0", "INPUT1")]
    outputs = [
        {"name": n, "data_type": "TYPE_FP32", "dims": [WIDTH]} for n in ("OUTPUT0", "OUTPUT1")
    ]
    return json.dumps(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 8,
            "input": tensors,
            "output": outputs,
        }
    )


@dataclass
class Limited:
    """A server with a 1 MiB message limit on a repository of its own."""

    process: ServerProcess
    repository: Path
    stub: pb_grpc.GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def stub(server_address: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    root = tmp_path_factory.mktemp("bad-input-repository")
    write_default_repository(root)
    # Present at start-up: the server must come up anyway and report it.
    (root / "broken_at_start" / "1").mkdir(parents=True)
    (root / "broken_at_start" / "1" / "model.onnx").write_bytes(GARBAGE)
    # Copies of `simple` that the load tests may damage, one for each rollback test.
    for name in ("victim", "victim_of_config", "victim_of_file"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(build_simple_model())
        (root / name / "config.json").write_text(simple_config(name))
    proc = start_server(["--repository", str(root), "--max-message-mb", str(MAX_MESSAGE_MB)])
    with grpc.insecure_channel(proc.address) as channel:
        yield Limited(proc, root, pb_grpc.GRPCInferenceServiceStub(channel))
    proc.terminate()


def operands(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, WIDTH)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


def good_request(batch: int = 1, model: str = MODEL) -> pb.ModelInferRequest:
    a, b = operands(batch)
    request = pb.ModelInferRequest(model_name=model, id="good")
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="FP32", shape=value.shape)
        request.raw_input_contents.append(value.tobytes())
    return request


def assert_serves(stub: pb_grpc.GRPCInferenceServiceStub, model: str = MODEL) -> None:
    """A correct request gets exact results."""
    a, b = operands(2, seed=5)
    request = pb.ModelInferRequest(model_name=model)
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="FP32", shape=value.shape)
        request.raw_input_contents.append(value.tobytes())
    response = stub.ModelInfer(request, timeout=TIMEOUT_S)
    outputs = {
        o.name: np.frombuffer(raw, np.float32).reshape(tuple(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("expected an error status, the call succeeded")


def assert_status(call: Callable[[], object], code: grpc.StatusCode, *words: str) -> str:
    """The call fails with `code` and a message holding every word; returns the message."""
    error = rpc_error(call)
    message = error.details() or ""
    assert error.code() == code, (error.code(), message)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# --- ModelInfer -----------------------------------------------------------------------------


def _set_datatype(r: pb.ModelInferRequest) -> None:
    r.inputs[0].datatype = "INT32"


def _invalid_datatype_name(r: pb.ModelInferRequest) -> None:
    r.inputs[1].datatype = "FLOAT32"


def _drop_batch_dim(r: pb.ModelInferRequest) -> None:
    del r.inputs[0].shape[:]
    r.inputs[0].shape.append(WIDTH)


def _narrow(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[1] = 15
    r.raw_input_contents[0] = r.raw_input_contents[0][: 15 * 4]


def _negative_dim(r: pb.ModelInferRequest) -> None:
    r.inputs[1].shape[0] = -1


def _zero_batch(r: pb.ModelInferRequest) -> None:
    for i in range(2):
        r.inputs[i].shape[0] = 0
        r.raw_input_contents[i] = b""


def _short_raw(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[0] = r.raw_input_contents[0][:-4]


def _long_raw(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[1] = r.raw_input_contents[1] + b"\x00" * 8


def _missing_input(r: pb.ModelInferRequest) -> None:
    del r.inputs[1]
    del r.raw_input_contents[1]


def _extra_input(r: pb.ModelInferRequest) -> None:
    r.inputs.add(name="INPUT2", datatype="FP32", shape=[1, WIDTH])
    r.raw_input_contents.append(bytes(4 * WIDTH))


def _duplicate_input(r: pb.ModelInferRequest) -> None:
    r.inputs.add(name="INPUT0", datatype="FP32", shape=[1, WIDTH])
    r.raw_input_contents.append(bytes(4 * WIDTH))


def _unknown_output(r: pb.ModelInferRequest) -> None:
    r.outputs.add(name="OUTPUT0")
    r.outputs.add(name="OUTPUT7")


def _duplicate_output(r: pb.ModelInferRequest) -> None:
    r.outputs.add(name="OUTPUT1")
    r.outputs.add(name="OUTPUT1")


def _raw_count(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[1]


def _typed(r: pb.ModelInferRequest, count: int, field: str = "fp32_contents") -> None:
    del r.raw_input_contents[:]
    for tensor in r.inputs:
        getattr(tensor.contents, field).extend([1.0] * count)


def _typed_short(r: pb.ModelInferRequest) -> None:
    _typed(r, WIDTH - 1)


def _typed_wrong_field(r: pb.ModelInferRequest) -> None:
    _typed(r, WIDTH, "fp64_contents")


def _raw_and_typed(r: pb.ModelInferRequest) -> None:
    r.inputs[1].contents.fp32_contents.extend([1.0] * WIDTH)


def _batch_mismatch(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[0] = 2
    r.raw_input_contents[0] = r.raw_input_contents[0] * 2


def _no_model(r: pb.ModelInferRequest) -> None:
    r.model_name = ""


def _unknown_model(r: pb.ModelInferRequest) -> None:
    r.model_name = "no_such_model"


def _unknown_version(r: pb.ModelInferRequest) -> None:
    r.model_version = "7"


def _bad_version(r: pb.ModelInferRequest) -> None:
    r.model_version = "latest"


@dataclass(frozen=True)
class Case:
    mutate: Callable[[pb.ModelInferRequest], None]
    code: grpc.StatusCode
    # The message names the tensor or model, the expected and the received value.
    words: tuple[str, ...]


INVALID = StatusCode.INVALID_ARGUMENT
CASES: dict[str, Case] = {
    "wrong_datatype": Case(_set_datatype, INVALID, ("INPUT0", MODEL, "FP32", "INT32")),
    "unknown_datatype": Case(_invalid_datatype_name, INVALID, ("INPUT1", "FP32", "FLOAT32")),
    "wrong_rank": Case(_drop_batch_dim, INVALID, ("INPUT0", MODEL, "[-1, 16]", "[16]")),
    "wrong_width": Case(_narrow, INVALID, ("INPUT0", "[-1, 16]", "[1, 15]")),
    "negative_dim": Case(_negative_dim, INVALID, ("INPUT1", "[-1, 16]", "[-1, 16]")),
    "zero_batch": Case(_zero_batch, INVALID, ("INPUT", "max_batch_size 8", "received 0")),
    "raw_too_short": Case(_short_raw, INVALID, ("INPUT0", "64 bytes", "received 60")),
    "raw_too_long": Case(_long_raw, INVALID, ("INPUT1", "64 bytes", "received 72")),
    "missing_input": Case(_missing_input, INVALID, ("INPUT1", MODEL, "['INPUT0']")),
    "extra_input": Case(_extra_input, INVALID, ("INPUT2", MODEL, "['INPUT0', 'INPUT1']")),
    "duplicate_input": Case(_duplicate_input, INVALID, ("INPUT0", "more than once")),
    "unknown_output": Case(_unknown_output, INVALID, ("OUTPUT7", MODEL, "['OUTPUT0', 'OUTPUT1']")),
    "duplicate_output": Case(_duplicate_output, INVALID, ("OUTPUT1", "more than once")),
    "raw_count": Case(_raw_count, INVALID, ("raw_input_contents", "(2)", "received 1")),
    "typed_count": Case(_typed_short, INVALID, ("INPUT0", "fp32_contents", "16", "received 15")),
    "typed_wrong_field": Case(
        _typed_wrong_field, INVALID, ("INPUT0", "fp32_contents", "16", "received 0")
    ),
    "raw_and_typed": Case(_raw_and_typed, INVALID, ("INPUT1", "raw_input_contents")),
    "batch_mismatch": Case(_batch_mismatch, INVALID, (MODEL, "'INPUT0': 2", "'INPUT1': 1")),
    "no_model_name": Case(_no_model, INVALID, ("model_name", "empty")),
    "unknown_model": Case(_unknown_model, StatusCode.NOT_FOUND, ("no_such_model", MODEL)),
    "unknown_version": Case(_unknown_version, StatusCode.NOT_FOUND, (MODEL, "'7'", "1")),
    "non_numeric_version": Case(_bad_version, StatusCode.NOT_FOUND, (MODEL, "'latest'", "1")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_infer_request(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> None:
    case = CASES[name]
    request = good_request()
    case.mutate(request)
    assert_status(lambda: stub.ModelInfer(request, timeout=TIMEOUT_S), case.code, *case.words)


def test_batch_over_max_batch_size(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = good_request(batch=9)
    assert_status(
        lambda: stub.ModelInfer(request, timeout=TIMEOUT_S),
        INVALID,
        "INPUT0",
        MODEL,
        "max_batch_size 8",
        "received 9",
    )
    stub.ModelInfer(good_request(batch=8), timeout=TIMEOUT_S)


def test_bad_request_on_a_stream_gets_an_error_and_the_stream_goes_on(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    bad = good_request()
    bad.id = "bad"
    _set_datatype(bad)
    good = good_request()
    responses = list(stub.ModelStreamInfer(iter([bad, good]), timeout=TIMEOUT_S))
    assert len(responses) == 2, responses
    by_id = {r.infer_response.id: r for r in responses}
    assert "INPUT0" in by_id["bad"].error_message and "INT32" in by_id["bad"].error_message
    assert not by_id["good"].error_message and len(by_id["good"].infer_response.outputs) == 2


# --- other RPCs -----------------------------------------------------------------------------


def test_metadata_config_statistics_of_unknown_models(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=TIMEOUT_S),
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name="nope"), timeout=TIMEOUT_S),
        lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope"), timeout=TIMEOUT_S),
    ]
    for call in calls:
        assert_status(call, StatusCode.NOT_FOUND, "nope", MODEL)
    assert_status(
        lambda: stub.ModelMetadata(
            pb.ModelMetadataRequest(name=MODEL, version="3"), timeout=TIMEOUT_S
        ),
        StatusCode.NOT_FOUND,
        MODEL,
        "'3'",
    )
    assert_status(
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(), timeout=TIMEOUT_S), INVALID, "name"
    )
    ready = stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=TIMEOUT_S)
    assert not ready.ready


def test_unload_unknown_model(limited: Limited) -> None:
    assert_status(
        lambda: limited.stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="nope"), timeout=TIMEOUT_S
        ),
        StatusCode.NOT_FOUND,
        "nope",
    )


# --- message size ---------------------------------------------------------------------------


def test_oversized_message(limited: Limited) -> None:
    request = good_request()
    request.raw_input_contents[0] = bytes(2 * 1024 * 1024)
    limit = str(MAX_MESSAGE_MB * 1024 * 1024)
    assert_status(
        lambda: limited.stub.ModelInfer(request, timeout=TIMEOUT_S),
        StatusCode.RESOURCE_EXHAUSTED,
        limit,
    )
    assert_serves(limited.stub)


def test_undecodable_message(limited: Limited) -> None:
    channel = grpc.insecure_channel(limited.process.address)
    # No serializers: the bytes go on the wire as they are.
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", None, None)
    with channel:
        for data in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x2a\x80"):
            with pytest.raises(DecodeError):
                pb.ModelInferRequest.FromString(data)
            assert_status(
                functools.partial(infer, data, timeout=TIMEOUT_S), INVALID, "ModelInferRequest"
            )


# --- model files and load parameters --------------------------------------------------------


def load(limited: Limited, name: str, **parameters: pb.ModelRepositoryParameter) -> object:
    request = pb.RepositoryModelLoadRequest(model_name=name)
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    return limited.stub.RepositoryModelLoad(request, timeout=30)


def string_param(value: str) -> pb.ModelRepositoryParameter:
    return pb.ModelRepositoryParameter(string_param=value)


def bytes_param(value: bytes) -> pb.ModelRepositoryParameter:
    return pb.ModelRepositoryParameter(bytes_param=value)


def index(limited: Limited) -> dict[str, pb.RepositoryIndexResponse.ModelIndex]:
    reply = limited.stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S)
    return {m.name: m for m in reply.models}


def test_corrupt_model_at_start_leaves_the_others_serving(limited: Limited) -> None:
    entry = index(limited)["broken_at_start"]
    assert entry.state == "UNAVAILABLE" and "broken_at_start" in entry.reason, entry
    assert_status(
        lambda: limited.stub.ModelInfer(good_request(model="broken_at_start"), timeout=TIMEOUT_S),
        StatusCode.UNAVAILABLE,
        "broken_at_start",
    )
    assert_serves(limited.stub)


def test_corrupt_model_file(limited: Limited) -> None:
    folder = limited.repository / "corrupt"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    (folder / "1" / "model.onnx").write_bytes(GARBAGE)
    assert_status(
        lambda: load(limited, "corrupt"), StatusCode.FAILED_PRECONDITION, "'corrupt'", "ONNX"
    )
    entry = index(limited)["corrupt"]
    assert entry.state == "UNAVAILABLE" and "corrupt" in entry.reason, entry
    ready = limited.stub.ModelReady(pb.ModelReadyRequest(name="corrupt"), timeout=TIMEOUT_S)
    assert not ready.ready
    assert_serves(limited.stub)


def test_corrupt_file_override_for_a_new_model(limited: Limited) -> None:
    assert_status(
        lambda: load(
            limited,
            "uploaded_garbage",
            config=string_param(simple_config("uploaded_garbage")),
            **{"file:1/model.onnx": bytes_param(GARBAGE)},
        ),
        StatusCode.FAILED_PRECONDITION,
        "'uploaded_garbage'",
    )
    assert_serves(limited.stub)


LOAD_ERRORS: dict[str, tuple[dict[str, pb.ModelRepositoryParameter], tuple[str, ...]]] = {
    "config_as_bytes": (
        {"config": bytes_param(b"{}")},
        ("'config'", "string_param", "bytes_param"),
    ),
    "file_as_string": (
        {"config": string_param(simple_config("victim")), "file:1/model.onnx": string_param("x")},
        ("file:1/model.onnx", "bytes_param", "string_param"),
    ),
    "unknown_parameter": ({"colour": string_param("blue")}, ("'colour'", "config", "file:")),
    "files_without_config": ({"file:1/model.onnx": bytes_param(b"x")}, ("'config'", "required")),
    "path_traversal": (
        {
            "config": string_param(simple_config("victim")),
            "file:../../etc/passwd": bytes_param(b"x"),
        },
        ("<version>/<file name>", "../../etc/passwd"),
    ),
    "version_zero": (
        {"config": string_param(simple_config("victim")), "file:0/model.onnx": bytes_param(b"x")},
        ("<version>/<file name>", "0/model.onnx"),
    ),
}


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_load_parameter_errors(limited: Limited, case: str) -> None:
    parameters, words = LOAD_ERRORS[case]
    before = sorted(p.relative_to(limited.repository) for p in limited.repository.rglob("*"))
    assert_status(lambda: load(limited, "victim", **parameters), INVALID, *words)
    after = sorted(p.relative_to(limited.repository) for p in limited.repository.rglob("*"))
    assert after == before, "a rejected load wrote to the repository"
    assert_serves(limited.stub, "victim")


def test_load_of_an_invalid_model_name(limited: Limited) -> None:
    assert_status(lambda: load(limited, "../outside"), INVALID, "model name", "'../outside'")
    assert_status(lambda: load(limited, ""), INVALID, "model_name")
    assert_status(lambda: load(limited, "never_written"), StatusCode.NOT_FOUND, "never_written")


def test_load_with_a_config_that_names_another_model(limited: Limited) -> None:
    assert_status(
        lambda: load(
            limited,
            "renamed",
            config=string_param(simple_config("other")),
            **{"file:1/model.onnx": bytes_param(build_simple_model())},
        ),
        INVALID,
        "'renamed'",
        "'other'",
    )


def assert_reloads(limited: Limited, name: str) -> None:
    """A plain reload of what is on disk succeeds and serves."""
    try:
        load(limited, name)
    except grpc.RpcError as error:
        raise AssertionError(
            f"reload of '{name}' failed: {error.code()}: {error.details()}"
        ) from None
    assert_serves(limited.stub, name)


def test_rejected_config_leaves_the_repository_as_it_was(limited: Limited) -> None:
    name = "victim_of_config"
    assert_status(
        lambda: load(limited, name, config=string_param("{not json")), INVALID, f"'{name}'"
    )
    assert_serves(limited.stub, name)
    assert_reloads(limited, name)


def test_corrupt_file_override_leaves_the_repository_as_it_was(limited: Limited) -> None:
    name = "victim_of_file"
    model_file = limited.repository / name / "1" / "model.onnx"
    good = model_file.read_bytes()
    assert_status(
        lambda: load(
            limited,
            name,
            config=string_param(simple_config(name)),
            **{"file:1/model.onnx": bytes_param(GARBAGE)},
        ),
        StatusCode.FAILED_PRECONDITION,
        f"'{name}'",
    )
    assert_serves(limited.stub, name)
    assert model_file.read_bytes() == good
    assert_reloads(limited, name)


# --- afterwards -----------------------------------------------------------------------------


def test_servers_still_answer_after_bad_input(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, limited: Limited
) -> None:
    for process, serving_stub in ((server, stub), (limited.process, limited.stub)):
        assert process.process.poll() is None
        assert_serves(serving_stub)
        live = serving_stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S)
        assert live.live
