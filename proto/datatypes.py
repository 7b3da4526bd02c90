"""The v2 protocol's tensor datatypes and their numpy equivalents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    """One v2 datatype: its protocol name, numpy dtype and typed-contents field."""

    name: str
    dtype: np.dtype
    # Field of InferTensorContents holding typed values, or None when only raw bytes work.
    contents_field: str | None
    # The numpy dtype of the values in that field (the wire widens INT8 to int32, and so on).
    contents_dtype: np.dtype | None
    # Name in ModelConfig (`TYPE_FP32`, ...).
    config_name: str


def _bf16_dtype() -> np.dtype:
    # numpy has no bfloat16; BF16 tensors are carried as their raw 16-bit patterns.
    return np.dtype(np.uint16)


_TABLE = [
    Datatype("BOOL", np.dtype(np.bool_), "bool_contents", np.dtype(np.bool_), "TYPE_BOOL"),
    Datatype("UINT8", np.dtype(np.uint8), "uint_contents", np.dtype(np.uint32), "TYPE_UINT8"),
    Datatype("UINT16", np.dtype(np.uint16), "uint_contents", np.dtype(np.uint32), "TYPE_UINT16"),
    Datatype("UINT32", np.dtype(np.uint32), "uint_contents", np.dtype(np.uint32), "TYPE_UINT32"),
    Datatype("UINT64", np.dtype(np.uint64), "uint64_contents", np.dtype(np.uint64), "TYPE_UINT64"),
    Datatype("INT8", np.dtype(np.int8), "int_contents", np.dtype(np.int32), "TYPE_INT8"),
    Datatype("INT16", np.dtype(np.int16), "int_contents", np.dtype(np.int32), "TYPE_INT16"),
    Datatype("INT32", np.dtype(np.int32), "int_contents", np.dtype(np.int32), "TYPE_INT32"),
    Datatype("INT64", np.dtype(np.int64), "int64_contents", np.dtype(np.int64), "TYPE_INT64"),
    Datatype("FP16", np.dtype(np.float16), None, None, "TYPE_FP16"),
    Datatype("FP32", np.dtype(np.float32), "fp32_contents", np.dtype(np.float32), "TYPE_FP32"),
    Datatype("FP64", np.dtype(np.float64), "fp64_contents", np.dtype(np.float64), "TYPE_FP64"),
    Datatype("BF16", _bf16_dtype(), None, None, "TYPE_BF16"),
    Datatype("BYTES", np.dtype(np.object_), "bytes_contents", np.dtype(np.object_), "TYPE_STRING"),
]

BY_NAME: dict[str, Datatype] = {d.name: d for d in _TABLE}
BY_CONFIG_NAME: dict[str, Datatype] = {d.config_name: d for d in _TABLE}
NAMES: tuple[str, ...] = tuple(d.name for d in _TABLE)
# numpy dtype -> datatype for the numeric types, first in table order (BF16 travels as uint16
# but a uint16 array is UINT16); the hot path of encoding every response.
_BY_DTYPE: dict[np.dtype, Datatype] = {}
for _d in _TABLE:
    if _d.name not in ("BF16", "BYTES"):
        _BY_DTYPE.setdefault(_d.dtype, _d)


def from_name(name: str) -> Datatype:
    """Look up a v2 datatype by protocol name; KeyError names the accepted ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown datatype {name!r}; expected one of {', '.join(NAMES)}") from None


def from_numpy(dtype: np.dtype) -> Datatype:
    """The v2 datatype of a numpy dtype (object and bytes/str arrays are BYTES)."""
    found = _BY_DTYPE.get(dtype)
    if found is not None:
        return found
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return BY_NAME["BYTES"]
    for d in _TABLE:
        if d.name != "BF16" and d.dtype == dtype:
            return d
    raise KeyError(f"numpy dtype {dtype} has no v2 datatype")
