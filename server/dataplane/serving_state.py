"""Whether the server takes new inference requests, and how many are in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class ServingState:
    """Readiness, draining, and a count of inference requests in flight (for drain)."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one inference request while it runs."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no inference request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
