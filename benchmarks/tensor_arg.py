"""`NAME:DATATYPE:SHAPE` command-line tensor descriptions shared by the benchmark scripts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from trtserve.protocol import datatypes


@dataclass(frozen=True)
class TensorArg:
    """A tensor's name, v2 datatype and full shape (batch dimension included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}:{self.datatype}:{','.join(map(str, self.shape))}"

    def random_bytes(self, rng: np.random.Generator) -> bytes:
        """Random raw contents of this tensor (numeric datatypes only)."""
        dtype = datatypes.from_name(self.datatype).dtype
        if dtype.kind == "f":
            array = rng.standard_normal(self.shape).astype(dtype)
        elif dtype.kind == "b":
            array = rng.integers(0, 2, self.shape).astype(dtype)
        else:
            array = rng.integers(0, 100, self.shape).astype(dtype)
        return array.tobytes()

    def zero_bytes(self) -> bytes:
        """Zero-filled raw contents of this tensor (numeric datatypes only)."""
        dtype = datatypes.from_name(self.datatype).dtype
        return bytes(int(np.prod(self.shape)) * dtype.itemsize)


def parse_tensor_arg(text: str) -> TensorArg:
    """Parse `INPUT0:FP32:1,16`; ValueError names the part that is wrong."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"tensor {text!r}: expected NAME:DATATYPE:SHAPE, e.g. INPUT0:FP32:1,16")
    name, datatype, shape_text = parts
    if datatype not in datatypes.NAMES or datatype == "BYTES":
        raise ValueError(f"tensor {text!r}: expected a numeric v2 datatype, received {datatype!r}")
    try:
        shape = tuple(int(d) for d in shape_text.split(","))
    except ValueError:
        raise ValueError(
            f"tensor {text!r}: expected a shape of comma-separated integers, "
            f"received {shape_text!r}"
        ) from None
    if not name or any(d < 1 for d in shape):
        raise ValueError(f"tensor {text!r}: expected a name and dimensions >= 1")
    return TensorArg(name, datatype, shape)


def tensor_argument(text: str) -> TensorArg:
    """parse_tensor_arg for argparse `type=`, so a mistake prints its reason."""
    try:
        return parse_tensor_arg(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
