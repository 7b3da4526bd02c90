"""Requests with tensors by reference to shared memory, and the shared-memory calls."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trtserve.client import (
    CudaRegionStatus,
    InferenceClient,
    InferInput,
    SharedMemoryInput,
    SharedMemoryOutput,
    SystemRegionStatus,
    TensorMetadata,
    calls,
)
from trtserve.client import request as rq
from trtserve.protocol import grpc_service_pb2 as pb

A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.full((2, 16), 2.0, dtype=np.float32)


def roundtrip(message: pb.ModelInferRequest) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(message.SerializeToString())


def mixed_request() -> pb.ModelInferRequest:
    """INPUT0 by reference at offset 0, INPUT1 inline; OUTPUT0 into a region, OUTPUT1 inline."""
    return rq.build_infer_request(
        "simple",
        [SharedMemoryInput("INPUT0", "FP32", (2, 16), "in", 128), InferInput("INPUT1", B)],
        [SharedMemoryOutput("OUTPUT0", "out", 128, offset=256), "OUTPUT1"],
        request_id="r1",
    )


# What tritonclient sends for mixed_request(), built in a child interpreter: tritonclient and
# trtserve.protocol cannot share one (both register `inference.*` in protobuf's default pool).
_TRITONCLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.grpc._utils import _get_inference_request

    a = InferInput("INPUT0", [2, 16], "FP32")
    a.set_shared_memory("in", 128)
    b = InferInput("INPUT1", [2, 16], "FP32")
    b.set_data_from_numpy(np.full((2, 16), 2.0, dtype=np.float32))
    out0 = InferRequestedOutput("OUTPUT0")
    out0.set_shared_memory("out", 128, offset=256)
    out1 = InferRequestedOutput("OUTPUT1")
    request = _get_inference_request(
        "simple", [a, b], "", "r1", [out0, out1], 0, False, False, 0, None, None
    )
    sys.stdout.write(request.SerializeToString().hex())
    """
)


def test_references_are_what_tritonclient_sends() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _TRITONCLIENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    theirs = pb.ModelInferRequest.FromString(bytes.fromhex(child.stdout))
    assert roundtrip(mixed_request()) == theirs


def test_reference_parameters_and_raw_contents_of_inline_inputs_only() -> None:
    request = roundtrip(mixed_request())
    by_ref, inline = request.inputs
    assert (by_ref.datatype, list(by_ref.shape)) == ("FP32", [2, 16])
    assert dict(by_ref.parameters) == {
        "shared_memory_region": pb.InferParameter(string_param="in"),
        "shared_memory_byte_size": pb.InferParameter(int64_param=128),
    }
    assert not inline.parameters
    assert list(request.raw_input_contents) == [B.tobytes()]
    placed, plain = request.outputs
    assert dict(placed.parameters) == {
        "shared_memory_region": pb.InferParameter(string_param="out"),
        "shared_memory_byte_size": pb.InferParameter(int64_param=128),
        "shared_memory_offset": pb.InferParameter(int64_param=256),
    }
    assert plain.name == "OUTPUT1" and not plain.parameters


def test_typed_contents_leave_references_without_contents() -> None:
    request = rq.build_infer_request(
        "simple",
        [SharedMemoryInput("INPUT0", "FP32", (2, 16), "in", 128, 64), InferInput("INPUT1", B)],
        use_typed_contents=True,
    )
    by_ref, inline = request.inputs
    assert not by_ref.HasField("contents")
    assert by_ref.parameters["shared_memory_offset"].int64_param == 64
    assert list(inline.contents.fp32_contents) == B.reshape(-1).tolist()
    assert not request.raw_input_contents


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (SharedMemoryInput("X", "FP32", (1,), "r", -1), "must not be negative"),
        (SharedMemoryInput("X", "FP32", (1,), "r", 4, -4), "must not be negative"),
        (SharedMemoryInput("X", "FP32", (1,), "", 4), "region name is empty"),
        (SharedMemoryOutput("Y", "r", 4, -1), "requested output 'Y'.*must not be negative"),
    ],
)
def test_bad_references_are_refused(
    tensor: SharedMemoryInput | SharedMemoryOutput, message: str
) -> None:
    inputs: list[InferInput | SharedMemoryInput] = []
    outputs: list[str | SharedMemoryOutput] = []
    if isinstance(tensor, SharedMemoryInput):
        inputs.append(tensor)
    else:
        outputs.append(tensor)
    with pytest.raises(ValueError, match=message):
        rq.build_infer_request("m", inputs, outputs)


def test_unknown_datatype_of_a_reference_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown datatype 'FLOAT'"):
        rq.build_infer_request("m", [SharedMemoryInput("X", "FLOAT", (1,), "r", 4)])


def placed_response(raw_for_placed: bytes = b"") -> pb.ModelInferResponse:
    """OUTPUT0 placed in shared memory (its raw entry `raw_for_placed`), OUTPUT1 inline."""
    response = pb.ModelInferResponse(model_name="simple", model_version="1")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[2, 16])
    response.outputs.add(name="OUTPUT1", datatype="FP32", shape=[2, 16])
    response.raw_output_contents.extend([raw_for_placed, (A - B).tobytes()])
    return response


def test_infer_call_reports_placed_outputs_by_shape_and_datatype() -> None:
    call = calls.infer(
        "simple",
        [InferInput("INPUT0", A), InferInput("INPUT1", B)],
        [SharedMemoryOutput("OUTPUT0", "out", 128), "OUTPUT1"],
        "",
        "",
        False,
    )
    response = pb.ModelInferResponse.FromString(placed_response().SerializeToString())
    result = call.parse(response)
    assert result.shared_memory_outputs == {"OUTPUT0": TensorMetadata("OUTPUT0", "FP32", (2, 16))}
    assert list(result.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert result.datatypes == {"OUTPUT0": "FP32", "OUTPUT1": "FP32"}
    with pytest.raises(KeyError, match="written into shared memory"):
        result.as_numpy("OUTPUT0")


def test_an_empty_raw_entry_not_asked_in_shared_memory_is_an_error() -> None:
    call = calls.infer("simple", [], None, "", "", False)
    with pytest.raises(ValueError, match="must be 128 bytes, received 0"):
        call.parse(placed_response())


def test_a_placed_output_that_came_back_inline_is_an_error() -> None:
    with pytest.raises(ValueError, match="asked in shared memory but came back inline"):
        rq.parse_infer_response(placed_response(A.tobytes()), in_shared_memory={"OUTPUT0"})


def test_status_answers_become_records_by_name() -> None:
    system = pb.SystemSharedMemoryStatusResponse()
    for name, key in (("b", "/kb"), ("a", "/ka")):
        system.regions[name].CopyFrom(
            pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=name, key=key, offset=8, byte_size=4096
            )
        )
    assert calls.system_shared_memory_status("").parse(system) == [
        SystemRegionStatus("a", "/ka", 8, 4096),
        SystemRegionStatus("b", "/kb", 8, 4096),
    ]
    cuda = pb.CudaSharedMemoryStatusResponse()
    cuda.regions["g"].CopyFrom(
        pb.CudaSharedMemoryStatusResponse.RegionStatus(name="g", device_id=1, byte_size=64)
    )
    assert calls.cuda_shared_memory_status("g").parse(cuda) == [CudaRegionStatus("g", 1, 64)]


_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


@pytest.mark.parametrize(
    "call",
    [
        calls.register_system_shared_memory("r", "/k", 4096, 16),
        calls.unregister_system_shared_memory(""),
        calls.system_shared_memory_status("r"),
        calls.register_cuda_shared_memory("g", b"\x01" * 64, 1, 4096),
        calls.unregister_cuda_shared_memory("g"),
        calls.cuda_shared_memory_status(""),
    ],
    ids=lambda c: c.method,
)
def test_each_call_names_a_service_method_of_its_request_type(call: calls.Call[object]) -> None:
    method = _SERVICE.methods_by_name[call.method]
    assert method.input_type is call.request.DESCRIPTOR
    assert not call.upload


def test_register_requests_carry_every_field() -> None:
    system = calls.register_system_shared_memory("r", "/k", 4096, 16).request
    assert (system.name, system.key, system.offset, system.byte_size) == ("r", "/k", 16, 4096)
    cuda = calls.register_cuda_shared_memory("g", b"\x01" * 64, 1, 4096).request
    assert (cuda.name, cuda.raw_handle, cuda.device_id, cuda.byte_size) == (
        "g",
        b"\x01" * 64,
        1,
        4096,
    )


def test_shared_memory_calls_need_a_single_server() -> None:
    # Channels connect lazily: the call is refused before anything is sent.
    with InferenceClient(["127.0.0.1:1", "127.0.0.1:2"]) as client:
        with pytest.raises(ValueError, match="registered with one server; this client has 2"):
            client.register_system_shared_memory("r", "/k", 64)
        with pytest.raises(ValueError, match="CudaSharedMemoryStatus"):
            client.cuda_shared_memory_status()
