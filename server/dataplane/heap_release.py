"""After requests that built millions of objects, give their freed memory back to the OS."""

from __future__ import annotations

import asyncio

from trtserve.protocol import allocator


class HeapRelease:
    """Runs allocator.release_freed_memory in a worker thread, one run at a time.

    Used from the event loop only. A request that finishes while a run is in progress asks
    for one more run after it, so the last request's memory is always released.
    """

    def __init__(self) -> None:
        self._running = False
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def after_request(self) -> None:
        """Ask for a release once the current task step (which holds the request) is over."""
        if self._running:
            self._again = True
            return
        self._running = True
        asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                await asyncio.to_thread(allocator.release_freed_memory)
                if not self._again:
                    return
        finally:
            self._running = False
