"""An instance's staging buffers: every allocation is freed, even after a failing CUDA call."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from trtserve.server.backends.tensorrt_memory import StagingBuffers, host_view
from trtserve.server.runtime.cuda_device import CudaError

_OUT_OF_MEMORY = 2


@dataclass
class FakeRuntime:
    """The CUDA runtime calls StagingBuffers makes, with addresses counted up from 1."""

    fail_host_alloc_after: int = 1_000
    fail_free: bool = False
    live: dict[int, int] = field(default_factory=dict)
    cudaHostAllocDefault: int = 0
    _next: int = 1

    def _alloc(self, size: int) -> tuple[int, int]:
        address, self._next = self._next, self._next + 1
        self.live[address] = size
        return 0, address

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        return self._alloc(size)

    def cudaHostAlloc(self, size: int, flags: int) -> tuple[int, ...]:
        if self.fail_host_alloc_after == 0:
            return (_OUT_OF_MEMORY,)
        self.fail_host_alloc_after -= 1
        return self._alloc(size)

    def cudaFree(self, address: int) -> tuple[int]:
        if self.fail_free:
            return (_OUT_OF_MEMORY,)
        del self.live[address]
        return (0,)

    def cudaFreeHost(self, address: int) -> tuple[int]:
        del self.live[address]
        return (0,)


def test_buffers_are_sized_for_each_tensor_and_all_freed() -> None:
    rt = FakeRuntime()
    buffers = StagingBuffers()
    buffers.allocate(rt, {"x": 16, "empty": 0})
    assert buffers.capacity == {"x": 16, "empty": 0}
    # A zero-byte tensor still gets an address.
    assert sorted(rt.live.values()) == [1, 1, 16, 16]
    errors: list[CudaError] = []
    buffers.free(rt, errors)
    assert errors == [] and rt.live == {}
    assert buffers.device == {} and buffers.host == {}


def test_a_failed_allocation_leaves_what_was_made_for_free() -> None:
    rt = FakeRuntime(fail_host_alloc_after=1)
    buffers = StagingBuffers()
    with pytest.raises(CudaError, match="cudaHostAlloc"):
        buffers.allocate(rt, {"a": 8, "b": 8})
    buffers.free(rt, [])
    assert rt.live == {}


def test_a_failed_free_is_collected_and_the_rest_still_freed() -> None:
    rt = FakeRuntime(fail_free=True)
    buffers = StagingBuffers()
    buffers.allocate(rt, {"a": 8, "b": 8})
    device = set(buffers.device.values())
    errors: list[CudaError] = []
    buffers.free(rt, errors)
    assert [e.status for e in errors] == ["cudaError 2", "cudaError 2"]
    # The pinned host buffers went even though every device free failed.
    assert set(rt.live) == device


def test_host_view_reads_and_writes_the_memory_at_an_address() -> None:
    backing = np.zeros(4, dtype=np.uint8)
    view = host_view(backing.ctypes.data, 4)
    view[:] = [1, 2, 3, 4]
    assert backing.tolist() == [1, 2, 3, 4]
    assert host_view(0, 0).size == 0
