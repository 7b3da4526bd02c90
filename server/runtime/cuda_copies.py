"""Synchronous copies between host arrays and GPU memory, for paths that need host data."""

from __future__ import annotations

import numpy as np

from trtserve.server.errors import FailedPrecondition
from trtserve.server.runtime.tensor_buffers import DeviceArray, DeviceMemory


def device_to_host(array: DeviceArray) -> np.ndarray:
    """A new host array holding the device array's data."""
    raise FailedPrecondition("CUDA shared memory needs a GPU; this server sees none")


def host_to_device(data: np.ndarray, target: DeviceMemory) -> None:
    """Copy `data`'s bytes to the target."""
    raise FailedPrecondition("CUDA shared memory needs a GPU; this server sees none")
