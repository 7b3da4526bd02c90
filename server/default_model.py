"""Built-in ONNX models, generated with the `onnx` package so nothing binary ships.

``simple`` (Triton's classic add/sub example) is what `trtserve serve` serves when no repository
is given; the dense model is a batching-friendly workload for the benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtserve.server.repository.repository import ModelRepository

# Opset 17 with its matching IR version 8: old enough for every supported onnxruntime.
OPSET = 17
IR_VERSION = 8
SIMPLE_WIDTH = 16

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] },
  { name: "INPUT1", data_type: TYPE_FP32, dims: [ 16 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] },
  { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 16 ] }
]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def _serialize(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="trtserve",
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def _fp32(name: str, width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


def build_simple_model() -> bytes:
    """OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, FP32 [batch, 16]."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [_fp32("INPUT0", SIMPLE_WIDTH), _fp32("INPUT1", SIMPLE_WIDTH)],
        [_fp32("OUTPUT0", SIMPLE_WIDTH), _fp32("OUTPUT1", SIMPLE_WIDTH)],
    )
    return _serialize(graph)


def build_dense_model(width: int = 2048, layers: int = 4, seed: int = 0) -> bytes:
    """`layers` x (MatMul by a fixed random width x width weight, then Relu), FP32 [batch, width].

    At batch 1 each request reads every weight (4 * width^2 bytes a layer) for little
    arithmetic, so executing many requests as one batch multiplies throughput.
    """
    if width < 1 or layers < 1:
        raise ValueError(f"dense model: expected width and layers >= 1, received {width}, {layers}")
    rng = np.random.default_rng(seed)
    # He initialisation keeps activations of the same magnitude through Relu layers.
    scale = np.float32(np.sqrt(2.0 / width))
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current = "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width), dtype=np.float32) * scale).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, name=f"w{i}"))
        product = f"matmul{i}"
        result = "y" if i == layers - 1 else f"relu{i}"
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [product]))
        nodes.append(helper.make_node("Relu", [product], [result]))
        current = result
    graph = helper.make_graph(
        nodes, "dense", [_fp32("x", width)], [_fp32("y", width)], initializer=weights
    )
    return _serialize(graph)


def write_default_repository(root: Path) -> list[str]:
    """Write the built-in `simple` model into `root` (atomically); return the model names."""
    repository = ModelRepository(root)
    repository.write_file("simple", "1/model.onnx", build_simple_model())
    repository.write_config("simple", SIMPLE_CONFIG, "pbtxt")
    return ["simple"]
