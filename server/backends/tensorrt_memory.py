"""An instance's CUDA memory: a device buffer and a pinned host staging buffer per tensor.

`rt` is the CUDA runtime module (`require_cudart()`), passed in so that importing this module
never imports CUDA.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtserve.server.runtime.cuda_device import CudaError, cuda_call


@dataclass(frozen=True)
class InstanceMemory:
    """Where one instance's CUDA objects live: its device, stream and buffer addresses."""

    device_id: int
    stream: int
    # Tensor name -> address, on the device and in pinned host memory.
    device_buffers: Mapping[str, int]
    host_buffers: Mapping[str, int]


@dataclass
class StagingBuffers:
    """Each tensor's device buffer and pinned host buffer, by tensor name, and their size."""

    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)

    def allocate(self, rt: Any, sizes: Mapping[str, int]) -> None:
        """Allocate both buffers of every tensor; on a failure, `free` releases what was made."""
        for name, nbytes in sizes.items():
            self.capacity[name] = nbytes
            size = max(nbytes, 1)
            self.device[name] = int(cuda_call("cudaMalloc", rt.cudaMalloc, size))
            self.host[name] = int(
                cuda_call("cudaHostAlloc", rt.cudaHostAlloc, size, rt.cudaHostAllocDefault)
            )

    def free(self, rt: Any, errors: list[CudaError]) -> None:
        """Free every buffer, collecting failures in `errors` so that one leaks nothing else."""
        for address in self.device.values():
            attempt(errors, "cudaFree", rt.cudaFree, address)
        for address in self.host.values():
            attempt(errors, "cudaFreeHost", rt.cudaFreeHost, address)
        self.device, self.host = {}, {}


def attempt(errors: list[CudaError], what: str, fn: Any, *args: Any) -> None:
    """Make one CUDA call, appending its failure to `errors` instead of raising it."""
    try:
        cuda_call(what, fn, *args)
    except CudaError as e:
        errors.append(e)


def host_view(address: int, nbytes: int) -> np.ndarray:
    """A uint8 numpy view of pinned host memory."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    buffer = (ctypes.c_uint8 * nbytes).from_address(address)
    return np.ctypeslib.as_array(buffer)


def stage(array: np.ndarray, address: int) -> None:
    """Copy `array`'s elements (in C order, from any layout) to pinned host memory at `address`."""
    view = host_view(address, array.nbytes)
    np.copyto(view.view(array.dtype).reshape(array.shape), array)
