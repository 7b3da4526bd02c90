"""Host memory ranges page-locked for CUDA (system shared-memory regions, mostly).

The data plane pins each system shared-memory mapping when a client registers it, so that a
backend can copy an input straight out of it, asynchronously and at full bandwidth, instead of
staging it through its own pinned buffer first. `contains` is asked once per input of every
request, so it reads an immutable snapshot without taking the lock.
"""

from __future__ import annotations

import bisect
import logging
import threading

from trtserve.server.runtime.cuda_device import CudaError, cuda_call, cuda_device_count, cudart

log = logging.getLogger(__name__)


class PinnedHostRanges:
    """Which host byte ranges are registered with cudaHostRegister, by start address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # start -> (end, how many pin calls hold it); a range pinned twice is unpinned once.
        self._ranges: dict[int, tuple[int, int]] = {}
        # Sorted starts and their ends, replaced whole under the lock and read without it.
        self._snapshot: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def pin(self, address: int, nbytes: int) -> bool:
        """Page-lock [address, address + nbytes) for every device; whether it is pinned now.

        False without raising when CUDA is not usable here, or (with a warning) when CUDA
        refuses the range: copies from it are then staged, which is slower but correct.
        """
        if nbytes <= 0:
            return False
        with self._lock:
            held = self._ranges.get(address)
            if held is not None and held[0] == address + nbytes:
                self._ranges[address] = (held[0], held[1] + 1)
                return True
            rt = cudart()
            if rt is None or cuda_device_count() == 0:
                return False
            try:
                cuda_call(
                    "cudaHostRegister",
                    rt.cudaHostRegister,
                    address,
                    nbytes,
                    rt.cudaHostRegisterPortable,
                )
            except CudaError as e:
                log.warning(
                    "could not pin %d bytes of host memory at 0x%x; copies from it will be "
                    "staged: %s",
                    nbytes,
                    address,
                    e,
                )
                return False
            self._ranges[address] = (address + nbytes, 1)
            self._publish()
            return True

    def unpin(self, address: int) -> None:
        """Undo one `pin` of the range starting at `address`; nothing when it is not pinned."""
        with self._lock:
            held = self._ranges.get(address)
            if held is None:
                return
            end, count = held
            if count > 1:
                self._ranges[address] = (end, count - 1)
                return
            del self._ranges[address]
            self._publish()
            rt = cudart()
            if rt is None:
                return
            try:
                cuda_call("cudaHostUnregister", rt.cudaHostUnregister, address)
            except CudaError as e:
                # The mapping is being released anyway; a failure here only leaks a page lock.
                log.warning("could not unpin host memory at 0x%x: %s", address, e)

    def empty(self) -> bool:
        """Whether no range is pinned (then no address needs looking up)."""
        return not self._snapshot[0]

    def contains(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies inside one pinned range."""
        starts, ends = self._snapshot
        if not starts:
            return False
        index = bisect.bisect_right(starts, address) - 1
        return index >= 0 and address + nbytes <= ends[index]

    def _publish(self) -> None:
        starts = tuple(sorted(self._ranges))
        self._snapshot = (starts, tuple(self._ranges[s][0] for s in starts))


# The process's one registry: CUDA page-locks per process, not per caller.
PINNED = PinnedHostRanges()
