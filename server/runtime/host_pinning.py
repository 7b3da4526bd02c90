"""Host memory pinned for the GPU (cudaHostRegister): which ranges, so copies can skip staging."""

from __future__ import annotations

import threading


class PinnedHostRanges:
    """Pinned host ranges of this process; without a GPU nothing is ever pinned."""

    def __init__(self) -> None:
        self._ranges: dict[int, int] = {}
        self._lock = threading.Lock()

    def pin(self, address: int, nbytes: int) -> bool:
        """Pin [address, address + nbytes); whether it is pinned now."""
        return False

    def unpin(self, address: int) -> None:
        """Unpin the range that starts at `address`."""
        with self._lock:
            self._ranges.pop(address, None)

    def contains(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies inside one pinned range."""
        with self._lock:
            return any(a <= address and address + nbytes <= a + n for a, n in self._ranges.items())


PINNED = PinnedHostRanges()
