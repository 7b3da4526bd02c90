"""Pinned output buffers lent to replies: back to the pool when the reply's last view is gone,
never freed under a view, and all freed once the instance closes."""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass, field

import numpy as np

from trtserve.server.backends.tensorrt_output_pool import (
    BUFFERS_PER_OUTPUT,
    MAX_POOLED_BYTES,
    OutputPool,
)

_OUT_OF_MEMORY = 2


@dataclass
class HostRuntime:
    """cudaHostAlloc and cudaFreeHost over ordinary host memory, counting what is live."""

    fail_alloc: bool = False
    live: dict[int, ctypes.Array[ctypes.c_char]] = field(default_factory=dict)
    allocations: int = 0

    def cudaHostAlloc(self, size: int, flags: int) -> tuple[int, ...]:
        if self.fail_alloc:
            return (_OUT_OF_MEMORY,)
        block = ctypes.create_string_buffer(size)
        address = ctypes.addressof(block)
        self.live[address] = block
        self.allocations += 1
        return 0, address

    def cudaFreeHost(self, address: int) -> tuple[int]:
        del self.live[address]
        return (0,)


def test_a_buffer_comes_back_when_its_last_view_is_gone() -> None:
    rt = HostRuntime()
    pool = OutputPool(rt, 64)
    lent = pool.lend()
    assert lent is not None
    address = lent.address
    out = lent.array(np.dtype(np.float32), (2, 8))
    out[:] = 7.0
    half = out[1]
    del lent, out
    # A slice (one request's rows of a batch) still holds the buffer.
    assert pool.lent == 1
    assert half.tolist() == [7.0] * 8
    del half
    assert pool.lent == 0
    again = pool.lend()
    assert again is not None and again.address == address
    assert rt.allocations == 1


def test_when_every_buffer_is_out_the_caller_copies_instead() -> None:
    rt = HostRuntime()
    pool = OutputPool(rt, 64)
    held = [pool.lend() for _ in range(BUFFERS_PER_OUTPUT)]
    assert all(b is not None for b in held)
    assert pool.lend() is None
    assert rt.allocations == BUFFERS_PER_OUTPUT
    held.pop()
    assert pool.lend() is not None


def test_closing_frees_idle_buffers_now_and_lent_ones_when_they_come_back() -> None:
    rt = HostRuntime()
    pool = OutputPool(rt, 64)
    idle, busy = pool.lend(), pool.lend()
    assert idle is not None and busy is not None
    view = busy.array(np.dtype(np.uint8), (64,))
    del idle, busy
    gc.collect()
    pool.close()
    # The buffer under `view` is still there: a reply may be encoding it.
    assert len(rt.live) == 1
    view[:] = 1
    assert pool.lend() is None
    del view
    assert rt.live == {}


def test_huge_outputs_are_not_pooled() -> None:
    rt = HostRuntime()
    assert OutputPool(rt, MAX_POOLED_BYTES + 1).lend() is None
    assert rt.allocations == 0


def test_out_of_pinned_memory_falls_back_to_copying() -> None:
    rt = HostRuntime(fail_alloc=True)
    pool = OutputPool(rt, 64)
    assert pool.lend() is None
    rt.fail_alloc = False
    # The pool stops trying: it keeps the buffers it has, none here.
    assert pool.lend() is None
    assert rt.allocations == 0
