"""Pinned host buffers that an instance's outputs are copied into and lent, uncopied, to replies.

Without them an output reaches the reply through two host copies: from the GPU into the
instance's one staging buffer, then out of it (the next execution overwrites it), then into
the serialized reply. With a pool, the GPU copies each output straight into a buffer of its own,
the reply encoder reads it from there, and the buffer comes back to the pool when the last numpy
view of it is gone (CPython frees an object when its last reference goes, so this happens as
the reply is sent, not at some later collection). A pool lends a few buffers per output and
makes them on first need; when all are out, or an output is too large to keep several of, the
instance copies as before.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np

from trtserve.server.runtime.cuda_device import CudaError, cuda_call

# Buffers per output: one per reply in flight is enough for the instance's own executions
# plus replies still being encoded.
BUFFERS_PER_OUTPUT = 4
# Larger outputs are copied out of the staging buffer instead: four spare pinned copies of a
# huge tensor cost more memory than the copy costs time.
MAX_POOLED_BYTES = 64 << 20


class OutputPool:
    """Lends pinned host buffers of one output's capacity; thread-safe.

    `rt` is the CUDA runtime module. After `close`, buffers still lent are freed as they come
    back, so a reply being encoded never reads freed memory.
    """

    def __init__(self, rt: Any, capacity: int, limit: int = BUFFERS_PER_OUTPUT) -> None:
        self._rt = rt
        self.capacity = max(capacity, 1)
        self._limit = limit if capacity <= MAX_POOLED_BYTES else 0
        # Re-entrant: a lent buffer may come back (its last view collected) in the middle of
        # `lend` on the same thread, when creating an object there runs the garbage collector.
        self._lock = threading.RLock()
        self._free: list[int] = []
        self._made = 0
        self._closed = False

    def lend(self) -> LentBuffer | None:
        """A buffer to copy an output into, or None when none is free (copy as before)."""
        with self._lock:
            if self._closed:
                return None
            if self._free:
                return LentBuffer(self, self._free.pop())
            if self._made >= self._limit:
                return None
            self._made += 1
        try:
            address = int(cuda_call("cudaHostAlloc", self._rt.cudaHostAlloc, self.capacity, 0))
        except CudaError:
            # Out of pinned memory: this output goes through the staging buffer.
            with self._lock:
                self._made -= 1
                self._limit = self._made
            return None
        return LentBuffer(self, address)

    def give_back(self, address: int) -> None:
        """Return a buffer (its last view is gone); freed instead when the pool is closed."""
        with self._lock:
            if not self._closed:
                self._free.append(address)
                return
            self._made -= 1
        self._free_host(address)

    def close(self) -> None:
        """Free the buffers not lent; the lent ones are freed as they come back."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
            self._made -= len(free)
        for address in free:
            self._free_host(address)

    @property
    def lent(self) -> int:
        """Buffers out now (the tests count them)."""
        with self._lock:
            return self._made - len(self._free)

    def _free_host(self, address: int) -> None:
        # Called as a reply's last view dies: nothing to report a failure to.
        with contextlib.suppress(CudaError):
            cuda_call("cudaFreeHost", self._rt.cudaFreeHost, address)


class LentBuffer:
    """One lent buffer; numpy views of it keep it, and it goes back when they are all gone."""

    __slots__ = ("__array_interface__", "_pool", "address")

    def __init__(self, pool: OutputPool, address: int) -> None:
        self._pool = pool
        self.address = address
        self.__array_interface__ = {
            "shape": (pool.capacity,),
            "typestr": "|u1",
            "data": (address, False),
            "version": 3,
        }

    def array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The output as a view of this buffer; the view keeps the buffer lent."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return np.asarray(self)[:nbytes].view(dtype).reshape(shape)

    def __del__(self) -> None:
        self._pool.give_back(self.address)
