"""GPU memory of another process, opened from the CUDA IPC handle that process exported.

A client registering a CUDA shared-memory region sends the 64 bytes `cudaIpcGetMemHandle` gave
it; the server maps that allocation into its own address space here. Two registrations of one
handle (different region names, same memory) share one mapping: CUDA maps a handle once per
context, so the mapping is reference-counted here and closed when the last one goes.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from dataclasses import dataclass
from typing import Any

from trtserve.server.errors import FailedPrecondition, Internal, InvalidArgument
from trtserve.server.runtime.cuda_device import (
    CudaError,
    cuda_call,
    cuda_device_count,
    cudart,
    use_device,
)

# sizeof(cudaIpcMemHandle_t): CUDA_IPC_HANDLE_SIZE.
IPC_HANDLE_SIZE = 64


@dataclass(frozen=True)
class IpcMemory:
    """An opened IPC allocation: `nbytes` usable from `address` on device `device_id`."""

    device_id: int
    address: int
    nbytes: int


class _IpcMappings:
    """Open mappings by (device, handle bytes), each with how many registrations hold it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, bytes], tuple[IpcMemory, int]] = {}

    def open(self, raw_handle: bytes, device_id: int) -> IpcMemory:
        raw = bytes(raw_handle)
        if len(raw) != IPC_HANDLE_SIZE:
            raise InvalidArgument(
                f"CUDA IPC handle: expected {IPC_HANDLE_SIZE} bytes (cudaIpcMemHandle_t), "
                f"received {len(raw)}"
            )
        rt = _require_gpu()
        count = cuda_device_count()
        if not 0 <= device_id < count:
            raise InvalidArgument(
                f"CUDA device {device_id} does not exist: this server sees {count} device(s) "
                f"(ids 0..{count - 1})"
            )
        key = (device_id, raw)
        with self._lock:
            held = self._open.get(key)
            if held is not None:
                self._open[key] = (held[0], held[1] + 1)
                return held[0]
            memory = _open_handle(rt, raw, device_id)
            self._open[key] = (memory, 1)
            return memory

    def close(self, memory: IpcMemory) -> None:
        with self._lock:
            key = next((k for k, (m, _) in self._open.items() if m == memory), None)
            if key is None:
                return
            held, count = self._open[key]
            if count > 1:
                self._open[key] = (held, count - 1)
                return
            del self._open[key]
            rt = _require_gpu()
            with use_device(memory.device_id):
                cuda_call("cudaIpcCloseMemHandle", rt.cudaIpcCloseMemHandle, memory.address)


_MAPPINGS = _IpcMappings()


def open_ipc_memory(raw_handle: bytes, device_id: int) -> IpcMemory:
    """Map the allocation `raw_handle` (cudaIpcMemHandle_t's 64 bytes) names on `device_id`."""
    return _MAPPINGS.open(raw_handle, device_id)


def close_ipc_memory(memory: IpcMemory) -> None:
    """Release one `open_ipc_memory` of it; the mapping closes with the last one."""
    _MAPPINGS.close(memory)


def _require_gpu() -> Any:
    rt = cudart()
    if rt is None or cuda_device_count() == 0:
        raise FailedPrecondition(
            "CUDA shared memory needs a GPU; this server sees none"
            + ("" if rt is not None else " (the cuda-bindings package is not installed)")
        )
    return rt


def _open_handle(rt: Any, raw: bytes, device_id: int) -> IpcMemory:
    handle = rt.cudaIpcMemHandle_t()
    try:
        handle.reserved = raw
    except AttributeError:
        # Some cuda-bindings releases expose the struct only through its address.
        ctypes.memmove(handle.getPtr(), raw, len(raw))
    with use_device(device_id):
        try:
            pointer = cuda_call(
                "cudaIpcOpenMemHandle",
                rt.cudaIpcOpenMemHandle,
                handle,
                rt.cudaIpcMemLazyEnablePeerAccess,
            )
        except CudaError as e:
            raise InvalidArgument(
                f"CUDA could not open the IPC handle on device {device_id}: {e}"
            ) from None
        address = int(pointer)
        try:
            nbytes = _bytes_to_end(address)
        except BaseException:
            cuda_call("cudaIpcCloseMemHandle", rt.cudaIpcCloseMemHandle, address)
            raise
    return IpcMemory(device_id, address, nbytes)


def _bytes_to_end(address: int) -> int:
    """Bytes from `address` to the end of the allocation that holds it (driver API).

    The runtime API has no query for an allocation's size; the driver's works on the context
    the runtime made current, and on IPC mappings like on any allocation.
    """
    driver = importlib.import_module("cuda.bindings.driver")
    err, base, size = driver.cuMemGetAddressRange(address)
    code = int(getattr(err, "value", err))
    if code != 0:
        name = getattr(err, "name", None) or f"CUresult {code}"
        raise Internal(f"CUDA cuMemGetAddressRange of an opened IPC handle failed: {name}")
    return int(base) + int(size) - address
