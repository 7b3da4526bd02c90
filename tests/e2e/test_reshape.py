"""Input and output `reshape` as Triton defines it: clients send and receive the config's
dims, the model is given and gives its own shape; through a real server and client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from server_process import ServerProcess, start_server

from trtserve.client import InferenceClient, InferInput, SystemSharedMemoryRegion
from trtserve.server.default_model import build_simple_model
from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.repository.model_config import (
    complete_settings,
    parse_config_text,
    settings_from_config,
)
from trtserve.server.specs import ModelIO, TensorSpec

# The built-in add/sub model has inputs and outputs of 16 FP32 values each.
CONFIG = """
name: "r"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4, 4 ], reshape: { shape: [ 16 ] } },
  { name: "INPUT1", data_type: TYPE_FP32, dims: [ 2, 8 ], reshape: { shape: [ 16 ] } }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 2, 2, 4 ], reshape: { shape: [ 16 ] } },
  { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 16 ] }
]
"""


@pytest.fixture(scope="module")
def reshaping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("reshape") / "repository"
    (root / "r" / "1").mkdir(parents=True)
    (root / "r" / "1" / "model.onnx").write_bytes(build_simple_model())
    (root / "r" / "config.pbtxt").write_text(CONFIG)
    server = start_server(["--repository", str(root)])
    try:
        yield server
    finally:
        server.terminate()


def test_clients_use_the_config_dims_and_the_model_its_own_shape(
    reshaping_server: ServerProcess,
) -> None:
    a = np.arange(3 * 16, dtype=np.float32).reshape(3, 4, 4)
    b = np.ones((3, 2, 8), dtype=np.float32)
    with InferenceClient(reshaping_server.address) as client:
        result = client.infer("r", [InferInput("INPUT0", a), InferInput("INPUT1", b)])
        metadata = client.model_metadata("r")
        config = client.model_config("r")
    flat_sum = a.reshape(3, 16) + b.reshape(3, 16)
    flat_difference = a.reshape(3, 16) - b.reshape(3, 16)
    assert result.as_numpy("OUTPUT0").shape == (3, 2, 2, 4)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), flat_sum.reshape(3, 2, 2, 4))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), flat_difference)
    shapes = {t.name: list(t.shape) for t in (*metadata.inputs, *metadata.outputs)}
    assert shapes == {
        "INPUT0": [-1, 4, 4],
        "INPUT1": [-1, 2, 8],
        "OUTPUT0": [-1, 2, 2, 4],
        "OUTPUT1": [-1, 16],
    }
    # The reported config says both shapes (int64 values are strings in protobuf's JSON).
    assert config["input"][0]["dims"] == ["4", "4"]
    assert config["input"][0]["reshape"] == {"shape": ["16"]}
    assert "reshape" not in config["output"][1]


def test_tensors_by_reference_are_reshaped_alike(reshaping_server: ServerProcess) -> None:
    a = np.arange(2 * 16, dtype=np.float32).reshape(2, 4, 4)
    b = np.full((2, 2, 8), 0.5, dtype=np.float32)
    name = f"reshape-{uuid.uuid4().hex[:8]}"
    with (
        SystemSharedMemoryRegion.create(name, f"/trtserve-{name}", 4096) as region,
        InferenceClient(reshaping_server.address) as client,
    ):
        client.register_system_shared_memory(region.name, region.key, region.byte_size)
        try:
            inputs = [region.write_input("INPUT0", a, 0), region.write_input("INPUT1", b, 1024)]
            outputs = [region.output_reference("OUTPUT0", 128, 2048)]
            result = client.infer("r", inputs, outputs)
            placed = region.read("FP32", (2, 2, 2, 4), 2048)
        finally:
            client.unregister_system_shared_memory(region.name)
    assert result.shared_memory_outputs["OUTPUT0"].shape == (2, 2, 2, 4)
    expected = (a.reshape(2, 16) + b.reshape(2, 16)).reshape(2, 2, 2, 4)
    np.testing.assert_array_equal(placed, expected)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            '{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 4, 4 ], reshape: { shape: [ 15 ] } }',
            "input 'INPUT0': reshape: expected 16 elements (as dims [4, 4]), received shape "
            "[15] of 15",
        ),
        (
            '{ name: "INPUT0", data_type: TYPE_FP32, dims: [ -1, 4 ], reshape: { shape: [ 16 ] } }',
            "variable dimensions with a reshape are not supported",
        ),
    ],
)
def test_a_reshape_that_cannot_hold_is_refused(tensor: str, message: str) -> None:
    text = f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ninput [ {tensor} ]\n'
    with pytest.raises(InvalidArgument) as refused:
        settings_from_config(parse_config_text(text, "pbtxt", "m"), "m")
    assert message in str(refused.value)


def test_a_reshape_the_model_file_does_not_have_is_refused() -> None:
    text = (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ninput [ { name: "X", data_type: '
        "TYPE_FP32, dims: [ 2, 8 ], reshape: { shape: [ 4, 4 ] } } ]\n"
    )
    settings = settings_from_config(parse_config_text(text, "pbtxt", "m"), "m")
    io = ModelIO((TensorSpec("X", "FP32", (-1, 16)),), (), max_batch_size=-1)
    with pytest.raises(FailedPrecondition) as refused:
        complete_settings(settings, io)
    assert "input 'X': expected reshape compatible with [16]" in str(refused.value)
    assert "received [4, 4]" in str(refused.value)
