"""Tensors that do not travel in the request message: GPU memory, and outputs placed by reference.

A client that passes tensors by reference (the shared-memory extensions) names bytes it owns:
pages of a /dev/shm object, which the server maps and reads as numpy views, or GPU memory it
exported with CUDA IPC, which the server sees as a `DeviceArray`. Outputs can go the same way:
each `OutputTarget` says where one request's output is written instead of into the reply.

These are plain records so that every layer above the runtime can pass them on; only backends
that declare `device_tensors` (TensorRT) ever receive a `DeviceArray` or a `GatheredArray`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from trtserve.server.errors import InvalidArgument


@dataclass(frozen=True)
class DeviceArray:
    """A tensor in GPU memory at `address` on CUDA device `device_id`, C-contiguous."""

    device_id: int
    address: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor spans."""
        return math.prod(self.shape) * self.dtype.itemsize

    def rows(self, start: int, count: int) -> DeviceArray:
        """Rows [start, start + count) of dimension 0, without a copy."""
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        return DeviceArray(
            self.device_id,
            self.address + start * row_bytes,
            self.dtype,
            (count, *self.shape[1:]),
        )


@dataclass(frozen=True)
class GatheredArray:
    """Several requests' inputs that one execution takes concatenated along dimension 0.

    Made when a batch mixes GPU parts in: the backend copies each part to its place in its
    own buffer (device to device, or host to device), where numpy would have concatenated.
    """

    parts: tuple[np.ndarray | DeviceArray, ...]

    @property
    def dtype(self) -> np.dtype:
        """The parts' common dtype."""
        return self.parts[0].dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The concatenated shape."""
        first = tuple(self.parts[0].shape)
        return (sum(int(p.shape[0]) for p in self.parts), *first[1:])

    @property
    def nbytes(self) -> int:
        """Bytes of all parts together."""
        return sum(int(p.nbytes) for p in self.parts)


# What a backend receives as one input.
InputArray = np.ndarray | DeviceArray | GatheredArray


@dataclass(frozen=True)
class DeviceMemory:
    """A span of GPU memory: `nbytes` at `address` on CUDA device `device_id`."""

    device_id: int
    address: int
    nbytes: int


@dataclass(frozen=True)
class OutputTarget:
    """Where one request's output goes instead of the reply: host bytes or GPU memory.

    Exactly one of `host` (a writable uint8 view of a system shared-memory region) and
    `device` is set. `nbytes` is what the client made room for.
    """

    region: str
    nbytes: int
    host: np.ndarray | None = None
    device: DeviceMemory | None = None


@dataclass(frozen=True)
class RowTarget:
    """Rows of a batch's output that belong to one request, and where they go.

    `rows` is None when the model does not batch: the whole output goes to the target.
    """

    first_row: int
    rows: int | None
    target: OutputTarget


# No output passed by reference (the default of ModelInstance.execute).
NO_TARGETS: Mapping[str, Sequence[RowTarget]] = MappingProxyType({})


@dataclass(frozen=True)
class PlacedOutput:
    """An output that was written into its target; only its description goes on to the reply."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes written."""
        return math.prod(self.shape) * self.dtype.itemsize


def check_fits(name: str, target: OutputTarget, nbytes: int) -> None:
    """Raise InvalidArgument unless `nbytes` of output `name` fit `target`."""
    if nbytes > target.nbytes:
        raise InvalidArgument(
            f"output '{name}': shared-memory region '{target.region}' has room for "
            f"{target.nbytes} bytes (shared_memory_byte_size), the output needs {nbytes}"
        )
