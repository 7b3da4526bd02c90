"""CUDA shared-memory regions: GPU memory the server maps through a CUDA IPC handle::

    from trtserve.client.cuda_shared_memory import CudaSharedMemoryRegion

    with CudaSharedMemoryRegion.create("gpu-in", 1 << 20, device_id=0) as region:
        client.register_cuda_shared_memory(
            region.name, region.raw_handle(), region.device_id, region.byte_size
        )
        x = region.write_input("INPUT0", array)              # copied host to device
        ...
        client.unregister_cuda_shared_memory(region.name)

It needs NVIDIA's CUDA Python bindings (`pip install cuda-bindings`, imported on first use)
and a GPU; without them `create` raises CudaSharedMemoryError. The server must run on the
same host. Writes copy host to device and reads device to host, synchronously.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType, TracebackType
from typing import Any, Self

import numpy as np

from trtserve.client.shared_memory import Region

IPC_HANDLE_BYTES = 64


class CudaSharedMemoryError(RuntimeError):
    """CUDA is unavailable, or a CUDA call failed (the message names the call and error)."""


def _runtime() -> ModuleType:
    """cuda.bindings.runtime, imported on first use."""
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        raise CudaSharedMemoryError(
            "CUDA shared memory needs NVIDIA's CUDA Python bindings: pip install cuda-bindings "
            f"({e})"
        ) from None
    module: ModuleType = runtime
    return module


def _check(rt: ModuleType, what: str, result: tuple[Any, ...]) -> Any:
    """The value of a runtime call's (error, value...) result; CudaSharedMemoryError on error."""
    error = result[0]
    if error != rt.cudaError_t.cudaSuccess:
        _, message = rt.cudaGetErrorString(error)
        text = message.decode() if isinstance(message, bytes) else str(message)
        raise CudaSharedMemoryError(f"{what} failed: {getattr(error, 'name', error)}: {text}")
    return result[1] if len(result) == 2 else result[1:]


class CudaSharedMemoryRegion(Region):
    """`byte_size` bytes of memory allocated with cudaMalloc on GPU `device_id`."""

    def __init__(self, name: str, byte_size: int, device_id: int, pointer: int) -> None:
        super().__init__(name, byte_size)
        self.device_id = device_id
        self._pointer: int | None = pointer

    @classmethod
    def create(cls, name: str, byte_size: int, device_id: int = 0) -> Self:
        """Allocate `byte_size` bytes on GPU `device_id`."""
        if byte_size <= 0:
            raise ValueError(f"byte_size must be positive, received {byte_size}")
        rt = _runtime()
        with _on_device(rt, device_id):
            pointer = int(_check(rt, "cudaMalloc", rt.cudaMalloc(byte_size)))
        return cls(name, byte_size, device_id, pointer)

    @property
    def closed(self) -> bool:
        return self._pointer is None

    @property
    def pointer(self) -> int:
        """The device address of the region's first byte."""
        if self._pointer is None:
            raise ValueError(f"CUDA shared-memory region '{self.name}' is freed")
        return self._pointer

    def raw_handle(self) -> bytes:
        """The 64 bytes of the allocation's cudaIpcMemHandle_t, as the server registers it."""
        rt = _runtime()
        with _on_device(rt, self.device_id):
            handle = _check(rt, "cudaIpcGetMemHandle", rt.cudaIpcGetMemHandle(self.pointer))
        # cuda-bindings 13 exposes the handle's bytes only through the struct's address.
        return ctypes.string_at(handle.getPtr(), IPC_HANDLE_BYTES)

    def _copy(self, what: str, dst: int, src: int, nbytes: int, kind: str) -> None:
        if nbytes == 0:
            return
        rt = _runtime()
        with _on_device(rt, self.device_id):
            copy_kind = getattr(rt.cudaMemcpyKind, kind)
            _check(rt, what, rt.cudaMemcpy(dst, src, nbytes, copy_kind))

    def _put(self, offset: int, data: memoryview) -> None:
        host = np.frombuffer(data, dtype=np.uint8)
        self._copy(
            "cudaMemcpy (host to device)",
            self.pointer + offset,
            host.ctypes.data,
            host.nbytes,
            "cudaMemcpyHostToDevice",
        )

    def _get(self, offset: int, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, dtype=np.uint8)
        self._copy(
            "cudaMemcpy (device to host)",
            out.ctypes.data,
            self.pointer + offset,
            nbytes,
            "cudaMemcpyDeviceToHost",
        )
        return out

    def free(self) -> None:
        """Free the GPU memory; freeing twice is harmless."""
        if self._pointer is None:
            return
        rt = _runtime()
        pointer, self._pointer = self._pointer, None
        with _on_device(rt, self.device_id):
            _check(rt, "cudaFree", rt.cudaFree(pointer))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.free()

    def __repr__(self) -> str:
        state = "freed" if self.closed else f"{self.byte_size} bytes"
        return f"CudaSharedMemoryRegion({self.name!r}, device {self.device_id}, {state})"


@contextmanager
def _on_device(rt: ModuleType, device_id: int) -> Iterator[None]:
    """Make `device_id` the current device for the block, then restore the previous one."""
    previous = int(_check(rt, "cudaGetDevice", rt.cudaGetDevice()))
    if previous == device_id:
        yield
        return
    _check(rt, f"cudaSetDevice({device_id})", rt.cudaSetDevice(device_id))
    try:
        yield
    finally:
        _check(rt, f"cudaSetDevice({previous})", rt.cudaSetDevice(previous))
