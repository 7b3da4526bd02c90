"""Synchronous copies between host arrays and GPU memory, for the data plane.

Used where no backend stream is involved: a backend that takes only host arrays (ONNX Runtime)
gets a CUDA shared-memory input as a host copy, and an output the backend did not place is
written into its CUDA shared-memory region afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.runtime.cuda_device import cuda_call, cuda_device_count, cudart, use_device
from trtserve.server.runtime.tensor_buffers import DeviceArray, DeviceMemory


def device_to_host(array: DeviceArray) -> np.ndarray:
    """A new host array with the contents of `array`."""
    rt = _require_device(array.device_id)
    out = np.empty(array.shape, dtype=array.dtype)
    if out.nbytes:
        with use_device(array.device_id):
            cuda_call(
                "cudaMemcpy device to host",
                rt.cudaMemcpy,
                out.ctypes.data,
                array.address,
                out.nbytes,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            )
    return out


def host_to_device(data: np.ndarray, target: DeviceMemory) -> None:
    """Copy `data`'s bytes (in C order) to the start of `target`."""
    if data.nbytes > target.nbytes:
        raise InvalidArgument(
            f"{data.nbytes} bytes do not fit the {target.nbytes} bytes of GPU memory at "
            f"device {target.device_id}"
        )
    rt = _require_device(target.device_id)
    contiguous = np.ascontiguousarray(data)
    if not contiguous.nbytes:
        return
    with use_device(target.device_id):
        cuda_call(
            "cudaMemcpy host to device",
            rt.cudaMemcpy,
            target.address,
            contiguous.ctypes.data,
            contiguous.nbytes,
            rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
        )
        # From pageable memory cudaMemcpy returns once the bytes are staged, before the DMA
        # lands; whoever reads the target next (a client, another stream) must see them all.
        cuda_call("cudaStreamSynchronize", rt.cudaStreamSynchronize, 0)


def _require_device(device_id: int) -> Any:
    rt = cudart()
    count = cuda_device_count() if rt is not None else 0
    if count == 0:
        raise FailedPrecondition("copying to or from GPU memory needs a GPU; this server sees none")
    if not 0 <= device_id < count:
        raise InvalidArgument(
            f"CUDA device {device_id} does not exist: this server sees {count} device(s)"
        )
    return rt
