"""A registered CUDA shared-memory region: GPU memory a client exported with CUDA IPC.

The client allocates GPU memory, exports it (cudaIpcGetMemHandle) and registers the 64-byte
handle with the device it lives on. The server opens the handle once, on that device; each
request then names the region, an offset and a size, and a backend that takes GPU tensors
(TensorRT) reads and writes the client's memory directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trtserve.server.dataplane.system_region import check_bounds
from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.runtime.cuda_ipc import (
    IPC_HANDLE_SIZE,
    IpcMemory,
    close_ipc_memory,
    open_ipc_memory,
)
from trtserve.server.runtime.tensor_buffers import DeviceArray, DeviceMemory


@dataclass(frozen=True)
class CudaRegionStatus:
    """What CudaSharedMemoryStatus reports for one region."""

    name: str
    device_id: int
    byte_size: int


class CudaRegion:
    """`byte_size` bytes of GPU memory on `device_id`, opened from an IPC handle."""

    def __init__(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        if len(raw_handle) != IPC_HANDLE_SIZE:
            raise InvalidArgument(
                f"CUDA shared-memory region '{name}': raw_handle: expected the "
                f"{IPC_HANDLE_SIZE} bytes of a cudaIpcMemHandle_t, received {len(raw_handle)}"
            )
        if byte_size < 1:
            raise InvalidArgument(
                f"CUDA shared-memory region '{name}': byte_size: expected at least 1, "
                f"received {byte_size}"
            )
        self.name = name
        self.device_id = device_id
        self.byte_size = byte_size
        try:
            self._memory: IpcMemory | None = open_ipc_memory(raw_handle, device_id)
        except (InvalidArgument, FailedPrecondition) as error:
            # The same status, with the region named.
            raise type(error)(f"CUDA shared-memory region '{name}': {error}") from None
        if byte_size > self._memory.nbytes:
            available = self._memory.nbytes
            self.close()
            raise InvalidArgument(
                f"CUDA shared-memory region '{name}': byte_size: the exported allocation "
                f"holds {available} bytes, received {byte_size}"
            )

    @property
    def status(self) -> CudaRegionStatus:
        """The region as CudaSharedMemoryStatus reports it."""
        return CudaRegionStatus(self.name, self.device_id, self.byte_size)

    def memory(self, offset: int, nbytes: int, field: str) -> DeviceMemory:
        """[offset, offset + nbytes) of the region; InvalidArgument naming `field` when out
        of bounds."""
        check_bounds(self.name, self.byte_size, offset, nbytes, field)
        return DeviceMemory(self.device_id, self._opened().address + offset, nbytes)

    def array(
        self, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...], field: str
    ) -> DeviceArray:
        """A tensor of `dtype` and `shape` at `offset` of the region."""
        memory = self.memory(offset, nbytes, field)
        return DeviceArray(self.device_id, memory.address, dtype, shape)

    def close(self) -> None:
        """Close the IPC handle; the memory stays the client's."""
        memory, self._memory = self._memory, None
        if memory is not None:
            close_ipc_memory(memory)

    def _opened(self) -> IpcMemory:
        if self._memory is None:
            raise InvalidArgument(f"CUDA shared-memory region '{self.name}' is unregistered")
        return self._memory
