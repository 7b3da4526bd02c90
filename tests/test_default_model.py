"""The built-in models: deterministic bytes, correct results, a loadable default repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from trtserve.server.backends.base import Placement
from trtserve.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtserve.server.default_model import (
    build_dense_model,
    build_simple_model,
    write_default_repository,
)
from trtserve.server.repository.model_config import complete_settings
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings, TensorSpec

CPU = Placement(DeviceKind.CPU)


def test_simple_model_is_deterministic_and_valid() -> None:
    data = build_simple_model()
    assert data == build_simple_model()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["INPUT0", "INPUT1"]
    assert [o.name for o in model.graph.output] == ["OUTPUT0", "OUTPUT1"]


def dense(tmp_path: Path, data: bytes) -> np.ndarray:
    path = tmp_path / "dense.onnx"
    path.write_bytes(data)
    loaded = OnnxRuntimeBackend().load(path, ModelSettings("dense", "onnxruntime_onnx"))
    assert loaded.io.inputs == (TensorSpec("x", "FP32", (-1, 64)),)
    assert loaded.io.outputs == (TensorSpec("y", "FP32", (-1, 64)),)
    assert loaded.io.max_batch_size == -1
    x = np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 64)
    return loaded.create_instance(CPU).execute({"x": x}, ["y"]).outputs["y"]


def test_dense_model_shape_and_determinism(tmp_path: Path) -> None:
    data = build_dense_model(width=64, layers=3, seed=7)
    assert data == build_dense_model(width=64, layers=3, seed=7)
    assert data != build_dense_model(width=64, layers=3, seed=8)
    nodes = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert nodes == ["MatMul", "Relu"] * 3
    y = dense(tmp_path, data)
    assert y.shape == (3, 64)
    assert y.dtype == np.float32
    assert np.all(y >= 0)
    assert np.any(y > 0)
    np.testing.assert_array_equal(y, dense(tmp_path, data))


def test_dense_model_rows_are_independent(tmp_path: Path) -> None:
    # Batching is only correct when each row's result is the same alone or in a batch.
    path = tmp_path / "dense.onnx"
    path.write_bytes(build_dense_model(width=32, layers=2))
    instance = (
        OnnxRuntimeBackend()
        .load(path, ModelSettings("dense", "onnxruntime_onnx"))
        .create_instance(CPU)
    )
    x = np.random.default_rng(1).standard_normal((4, 32), dtype=np.float32)
    batch = instance.execute({"x": x}, ["y"]).outputs["y"]
    for row in range(4):
        alone = instance.execute({"x": x[row : row + 1]}, ["y"]).outputs["y"]
        np.testing.assert_allclose(alone[0], batch[row], rtol=1e-5, atol=1e-6)


def test_default_repository_serves_simple(tmp_path: Path) -> None:
    assert write_default_repository(tmp_path) == ["simple"]
    repo = ModelRepository(tmp_path)
    assert repo.model_names() == ["simple"]
    assert repo.versions("simple") == [1]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "simple",
        "simple/1",
        "simple/1/model.onnx",
        "simple/config.pbtxt",
    ]
    s = repo.read_settings("simple")
    assert (s.platform, s.max_batch_size) == ("onnxruntime_onnx", 8)
    assert s.batching.enabled and s.batching.max_queue_delay_us == 500
    assert s.instance_groups == (InstanceGroup(2, DeviceKind.CPU),)
    loaded = OnnxRuntimeBackend().load(repo.model_path("simple", 1, s), s)
    done = complete_settings(s, loaded.io)
    assert done.inputs == (TensorSpec("INPUT0", "FP32", (16,)), TensorSpec("INPUT1", "FP32", (16,)))
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    out = loaded.create_instance(CPU).execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT0", "OUTPUT1"])
    np.testing.assert_array_equal(out.outputs["OUTPUT0"], a * 2)
    np.testing.assert_array_equal(out.outputs["OUTPUT1"], np.zeros_like(a))
    # Writing again (a restart) leaves the same files.
    assert write_default_repository(tmp_path) == ["simple"]
    assert (tmp_path / "simple" / "1" / "model.onnx").read_bytes() == build_simple_model()
