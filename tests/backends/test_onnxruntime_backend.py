"""The ONNX Runtime backend: loading, model IO, execution, parallel instances, bad files."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtserve.server.backends.base import Placement
from trtserve.server.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeModel
from trtserve.server.default_model import build_simple_model
from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.specs import DeviceKind, ModelIO, ModelSettings, TensorSpec

CPU = Placement(DeviceKind.CPU)


def settings(**parameters: str) -> ModelSettings:
    return ModelSettings(name="m", platform="onnxruntime_onnx", parameters=parameters)


def load(tmp_path: Path, data: bytes, **parameters: str) -> OnnxRuntimeModel:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return OnnxRuntimeBackend().load(path, settings(**parameters))


def onnx_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@pytest.fixture
def simple(tmp_path: Path) -> OnnxRuntimeModel:
    return load(tmp_path, build_simple_model())


def test_backend_identity_and_availability() -> None:
    backend = OnnxRuntimeBackend()
    assert (backend.platform, backend.default_filename) == ("onnxruntime_onnx", "model.onnx")
    assert backend.available() == (True, "")


def test_simple_model_io_has_a_variable_batch_dimension(simple: OnnxRuntimeModel) -> None:
    assert simple.io == ModelIO(
        inputs=(TensorSpec("INPUT0", "FP32", (-1, 16)), TensorSpec("INPUT1", "FP32", (-1, 16))),
        outputs=(
            TensorSpec("OUTPUT0", "FP32", (-1, 16)),
            TensorSpec("OUTPUT1", "FP32", (-1, 16)),
        ),
        max_batch_size=-1,
    )


@pytest.mark.parametrize("batch", [1, 5])
def test_simple_model_adds_and_subtracts_exactly(simple: OnnxRuntimeModel, batch: int) -> None:
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 16), dtype=np.float32)
    b = rng.standard_normal((batch, 16), dtype=np.float32)
    instance = simple.create_instance(CPU)
    result = instance.execute({"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    assert list(result.outputs) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(result.outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], a - b)
    assert result.outputs["OUTPUT0"].dtype == np.float32
    timings = result.timings
    assert min(timings.compute_input_ns, timings.compute_output_ns) >= 0
    assert timings.compute_infer_ns > 0
    instance.close()


def test_only_requested_outputs_are_returned(simple: OnnxRuntimeModel) -> None:
    a = np.ones((2, 16), np.float32)
    result = simple.create_instance(CPU).execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT1"])
    assert list(result.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], np.zeros((2, 16), np.float32))


def test_non_contiguous_inputs_are_accepted(simple: OnnxRuntimeModel) -> None:
    wide = np.arange(3 * 32, dtype=np.float32).reshape(3, 32)
    a = wide[:, ::2]
    assert not a.flags.c_contiguous
    result = simple.create_instance(CPU).execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])
    np.testing.assert_array_equal(result.outputs["OUTPUT0"], a * 2)


def test_two_instances_run_in_parallel_threads(simple: OnnxRuntimeModel) -> None:
    instances = [simple.create_instance(Placement(DeviceKind.CPU, index=i)) for i in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            for step in range(50):
                a = np.full((4, 16), index * 1000 + step, np.float32)
                b = np.arange(64, dtype=np.float32).reshape(4, 16)
                out = instances[index].execute({"INPUT0": a, "INPUT1": b}, ["OUTPUT0"])
                np.testing.assert_array_equal(out.outputs["OUTPUT0"], a + b)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_corrupt_file_is_failed_precondition_naming_path(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as e:
        load(tmp_path, b"\x00not an onnx model\xff" * 10)
    message = str(e.value)
    assert "model 'm'" in message
    assert str(tmp_path / "model.onnx") in message
    assert "ONNX Runtime cannot load" in message


def test_missing_file_is_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="received no such file"):
        OnnxRuntimeBackend().load(tmp_path / "absent.onnx", settings())


def test_gpu_placement_is_refused(simple: OnnxRuntimeModel) -> None:
    with pytest.raises(FailedPrecondition, match=r"expected a CPU placement .* received gpu 1"):
        simple.create_instance(Placement(DeviceKind.GPU, device_id=1))


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_thread_parameter_is_invalid_argument(tmp_path: Path, value: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        load(tmp_path, build_simple_model(), intra_op_threads=value)
    assert f"parameter 'intra_op_threads': expected a positive integer, received {value!r}" in (
        str(e.value)
    )


def test_thread_parameter_is_accepted(tmp_path: Path) -> None:
    model = load(tmp_path, build_simple_model(), intra_op_threads="2")
    a = np.ones((1, 16), np.float32)
    out = model.create_instance(CPU).execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])
    np.testing.assert_array_equal(out.outputs["OUTPUT0"], a * 2)


def test_fixed_batch_dimension_means_no_batching(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [2, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, "n"])],
    )
    model = load(tmp_path, onnx_bytes(graph))
    assert model.io == ModelIO(
        (TensorSpec("x", "INT32", (2, -1)),), (TensorSpec("y", "INT32", (2, -1)),), 0
    )


def test_string_tensors_take_and_return_bytes(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 2])],
    )
    model = load(tmp_path, onnx_bytes(graph))
    assert model.io.inputs == (TensorSpec("s", "BYTES", (-1, 2)),)
    data = np.array([[b"ab", "h\u00e9".encode()], [b"", b"z"]], dtype=np.object_)
    out = model.create_instance(CPU).execute({"s": data}, ["t"]).outputs["t"]
    assert out.shape == (2, 2)
    assert out.tolist() == data.tolist()


def test_non_utf8_bytes_for_a_string_tensor_are_invalid_argument(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])],
    )
    model = load(tmp_path, onnx_bytes(graph))
    data = np.array([b"\xff\xfe"], dtype=np.object_)
    with pytest.raises(InvalidArgument, match="input 's': expected UTF-8 strings"):
        model.create_instance(CPU).execute({"s": data}, ["t"])


def test_wrong_shape_reaching_ort_is_invalid_argument(simple: OnnxRuntimeModel) -> None:
    a = np.ones((1, 15), np.float32)
    with pytest.raises(InvalidArgument, match="model 'm'"):
        simple.create_instance(CPU).execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])


def test_string_models_run_without_the_cpu_memory_arena(
    tmp_path: Path, simple: OnnxRuntimeModel
) -> None:
    # The arena would keep the peak of the largest string request for the process's life.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])],
    )
    strings = load(tmp_path, onnx_bytes(graph)).create_instance(CPU)
    numeric = simple.create_instance(CPU)
    assert not strings._session.get_session_options().enable_cpu_mem_arena
    assert numeric._session.get_session_options().enable_cpu_mem_arena
