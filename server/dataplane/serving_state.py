"""Whether the server takes new inference requests, and how many are in flight."""

from __future__ import annotations

import asyncio
from types import TracebackType


class ServingState:
    """Readiness, draining, and a count of inference requests in flight (for drain)."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def track(self) -> InFlight:
        """Count one inference request while it runs (`with state.track(): ...`)."""
        return InFlight(self)

    def _begin(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _end(self) -> None:
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


class InFlight:
    """One request counted by its ServingState while the `with` block runs.

    A class, not contextlib.contextmanager: every inference request enters one, and a
    generator-based manager costs several times as much.
    """

    __slots__ = ("_state",)

    def __init__(self, state: ServingState) -> None:
        self._state = state

    def __enter__(self) -> None:
        self._state._begin()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._state._end()
