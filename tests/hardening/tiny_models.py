"""Tiny ONNX models for the hardening tests, and the repositories that hold them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.repository.transaction import LOCKS_FOLDER

WIDTH = 4


def add_constant_model(constant: float, pad_bytes: int = 0) -> bytes:
    """Y = X + constant, FP32 [batch, WIDTH]; `pad_bytes` of doc string make the file larger.

    The constant tells which file (version) answered a request.
    """
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", WIDTH])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", WIDTH])
    c = numpy_helper.from_array(np.full((WIDTH,), constant, dtype=np.float32), name="C")
    graph = helper.make_graph([helper.make_node("Add", ["X", "C"], ["Y"])], "add", [x], [y], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.doc_string = "p" * pad_bytes
    return bytes(model.SerializeToString())


def add_config(name: str) -> str:
    """config.json text of an add-constant model named `name`."""
    return json.dumps(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 8,
            "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
            "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        }
    )


def write_model(root: Path, name: str, version: int, data: bytes) -> Path:
    """Store an add-constant model as `<root>/<name>/<version>/model.onnx` with its config."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (root / name / "config.json").write_text(add_config(name))
    path = folder / "model.onnx"
    path.write_bytes(data)
    return path


def add_request(name: str, rows: int = 1) -> tuple[pb.ModelInferRequest, np.ndarray]:
    """A request for an add-constant model, and its input."""
    x = np.arange(rows * WIDTH, dtype=np.float32).reshape(rows, WIDTH)
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="X", datatype="FP32", shape=[rows, WIDTH])
    request.raw_input_contents.append(x.tobytes())
    return request, x


def output_of(response: pb.ModelInferResponse) -> np.ndarray:
    """The Y output of an add-constant model's response."""
    rows = int(response.outputs[0].shape[0])
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(rows, WIDTH)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (relative), with file contents; folders map to None.

    The repository's lock folder is left out: a model's empty lock file stays once a write to
    it began, refused or not.
    """
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if LOCKS_FOLDER in relative.parts:
            continue
        found[str(relative)] = path.read_bytes() if path.is_file() else None
    return found


def identity_model(element_type: int, rank: int) -> bytes:
    """Y = X for a tensor of `element_type` (an onnx TensorProto type) with `rank` free dims."""
    dims: list[str | int] = [f"d{i}" for i in range(rank)]
    x = helper.make_tensor_value_info("X", element_type, dims)
    y = helper.make_tensor_value_info("Y", element_type, dims)
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def write_identity_model(root: Path, name: str, element_type: int, rank: int) -> None:
    """Store an unbatched identity model of an FP32 or STRING tensor with its config."""
    folder = root / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(identity_model(element_type, rank))
    kind = "TYPE_STRING" if element_type == TensorProto.STRING else "TYPE_FP32"
    tensor = {"data_type": kind, "dims": [-1] * rank}
    config = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": 0,
        "input": [{"name": "X", **tensor}],
        "output": [{"name": "Y", **tensor}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    (root / name / "config.json").write_text(json.dumps(config))
