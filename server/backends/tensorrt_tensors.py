"""What a TensorRT engine declares: its I/O tensors, their profile bounds and the batch size.

Read from a deserialized engine (duck-typed: this module never imports TensorRT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtserve.protocol import datatypes
from trtserve.server.errors import FailedPrecondition
from trtserve.server.specs import TensorSpec

# TensorRT DataType names -> v2 datatypes. FP8, INT4 and FP4 have no v2 equivalent.
TRT_TO_V2 = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor of an engine."""

    name: str
    is_input: bool
    datatype: str
    dtype: np.dtype
    # -1 for dynamic dimensions.
    shape: tuple[int, ...]


def describe_tensors(engine: Any, model: str) -> tuple[EngineTensor, ...]:
    """The engine's I/O tensors in engine order; FailedPrecondition for unsupported ones."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        trt_type = _enum_name(engine.get_tensor_dtype(name))
        datatype = TRT_TO_V2.get(trt_type)
        if datatype is None:
            raise FailedPrecondition(
                f"model '{model}': tensor '{name}' has TensorRT type {trt_type}; supported: "
                f"{', '.join(TRT_TO_V2)}"
            )
        tensors.append(
            EngineTensor(
                name=name,
                is_input=_enum_name(engine.get_tensor_mode(name)) == "INPUT",
                datatype=datatype,
                dtype=datatypes.from_name(datatype).dtype,
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            )
        )
    return tuple(tensors)


def profile_bounds(
    engine: Any, tensor: EngineTensor, profile: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(min, max) shape of an input under one optimization profile."""
    if -1 not in tensor.shape:
        return tensor.shape, tensor.shape
    low, _opt, high = engine.get_tensor_profile_shape(tensor.name, profile)
    return tuple(int(d) for d in low), tuple(int(d) for d in high)


def max_batch_size(engine: Any, tensors: Sequence[EngineTensor]) -> int:
    """Largest dimension 0 all inputs accept when it is dynamic in every input, else 0."""
    inputs = [t for t in tensors if t.is_input]
    if not inputs or any(not t.shape or t.shape[0] != -1 for t in inputs):
        return 0
    profiles = range(engine.num_optimization_profiles)
    return min(max(profile_bounds(engine, t, p)[1][0] for p in profiles) for t in inputs)


def _enum_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name) if name is not None else str(value).rsplit(".", 1)[-1]


def tensor_spec(tensor: EngineTensor) -> TensorSpec:
    """The tensor as the model's metadata declares it."""
    return TensorSpec(tensor.name, tensor.datatype, tensor.shape)
