"""The registered shared-memory regions of the server, and the requests that use them.

Regions of both kinds share one namespace (a tensor reference names only the region). A request
leases the regions it references for as long as anything may touch their memory: the data
plane until the reply is built, the scheduler until the backend is done with the inputs. An
unregistered region disappears from the namespace at once, and is unmapped (or its IPC handle
closed) only when its last lease ends, so no request ever reads memory that went away.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from trtserve.server.dataplane.cuda_region import CudaRegion, CudaRegionStatus
from trtserve.server.dataplane.system_region import SHM_DIR, SystemRegion, SystemRegionStatus
from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

Region = SystemRegion | CudaRegion


class RegionKind(Enum):
    """The two kinds of shared memory, named as the protocol and metrics name them."""

    SYSTEM = "system"
    CUDA = "cuda"

    @property
    def title(self) -> str:
        """How messages name the kind."""
        return "system shared-memory" if self is RegionKind.SYSTEM else "CUDA shared-memory"


def kind_of(region: Region) -> RegionKind:
    """The kind of a region."""
    return RegionKind.SYSTEM if isinstance(region, SystemRegion) else RegionKind.CUDA


@dataclass(frozen=True)
class SharedMemoryLimits:
    """How many regions may be registered at once, and how many bytes they may map."""

    max_regions: int
    max_bytes: int


class _Entry:
    """A registered region and its leases; closed when unregistered and no longer leased."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.leases = 0
        self.unregistered = False
        self.closed = threading.Event()


class RegionChanges(Protocol):
    """Where a client's registration takes effect: this process's registry, or every worker's."""

    async def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register a byte range of the shared-memory object `key` as region `name`."""

    async def register_cuda(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Register GPU memory exported with CUDA IPC as region `name`."""

    async def unregister(self, kind: RegionKind, name: str) -> None:
        """Unregister one region of `kind`, or every one when `name` is empty."""


class SharedMemoryRegistry:
    """Registration, status and leasing of shared-memory regions."""

    def __init__(
        self,
        limits: SharedMemoryLimits,
        gpu_count: Callable[[], int],
        on_change: Callable[[dict[RegionKind, tuple[int, int]]], None] | None = None,
        directory: Path = SHM_DIR,
    ) -> None:
        """`gpu_count` says how many CUDA devices exist (CUDA regions need one); `on_change`
        receives (regions, bytes) per kind after every change (metrics); `directory` holds
        the shared-memory objects that system regions name (tests use their own)."""
        self.limits = limits
        self._directory = directory
        self._gpu_count = gpu_count
        self._on_change = on_change
        self._entries: dict[str, _Entry] = {}
        # Names being registered: reserved against duplicates and counted against the limits
        # while the (slow) mapping is made outside the lock.
        self._reserved: dict[str, int] = {}
        # Unregistered regions still mapped because requests use them: their bytes still
        # count against max_bytes until they are closed.
        self._draining: set[_Entry] = set()
        self._lock = threading.Lock()

    # --- registration ------------------------------------------------------------------------

    async def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map [offset, offset + byte_size) of the object `key` as region `name`."""
        self._reserve(name, byte_size, RegionKind.SYSTEM)
        await self._build(name, lambda: SystemRegion(name, key, offset, byte_size, self._directory))

    async def register_cuda(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Open the IPC handle on `device_id` as region `name`."""
        devices = self._gpu_count()
        if devices == 0:
            raise FailedPrecondition(
                f"CUDA shared-memory region '{name}': this server sees no GPU; register "
                "system shared memory instead"
            )
        if not 0 <= device_id < devices:
            raise InvalidArgument(
                f"CUDA shared-memory region '{name}': device_id: expected 0 to {devices - 1} "
                f"(this server sees {devices} GPU(s)), received {device_id}"
            )
        self._reserve(name, byte_size, RegionKind.CUDA)
        await self._build(name, lambda: CudaRegion(name, raw_handle, device_id, byte_size))

    def _reserve(self, name: str, byte_size: int, kind: RegionKind) -> None:
        if not name:
            raise InvalidArgument(
                f"{kind.title} region name: expected a non-empty name, received ''"
            )
        with self._lock:
            if name in self._entries or name in self._reserved:
                raise InvalidArgument(
                    f"{kind.title} region '{name}': name: a region of that name is already "
                    "registered; expected a new name (or unregister it first)"
                )
            regions = len(self._entries) + len(self._reserved)
            if regions >= self.limits.max_regions:
                raise ResourceExhausted(
                    f"{kind.title} region '{name}': {regions} regions are registered, the "
                    f"most this server allows (max_shared_memory_regions "
                    f"{self.limits.max_regions}); unregister one first"
                )
            mapped = self._mapped_bytes() + sum(self._reserved.values())
            if mapped + byte_size > self.limits.max_bytes:
                raise ResourceExhausted(
                    f"{kind.title} region '{name}': byte_size {byte_size} would bring the "
                    f"registered bytes to {mapped + byte_size}, over the limit "
                    f"{self.limits.max_bytes} (max_shared_memory_mb)"
                )
            self._reserved[name] = byte_size

    async def _build(self, name: str, make: Callable[[], Region]) -> None:
        """Make the region off the event loop (mapping, pinning, opening a handle)."""
        try:
            # Shielded: a caller that goes away must not leave a region nobody holds.
            task = asyncio.ensure_future(asyncio.to_thread(make))
            region = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._adopt_or_drop(name, t))
            raise
        except BaseException:
            with self._lock:
                self._reserved.pop(name, None)
            raise
        self._add(name, region)

    def _adopt_or_drop(self, name: str, task: asyncio.Future[Region]) -> None:
        """A region finished after its caller left: register it as asked (it was valid)."""
        if task.cancelled() or task.exception() is not None:
            with self._lock:
                self._reserved.pop(name, None)
            return
        self._add(name, task.result())

    def _add(self, name: str, region: Region) -> None:
        with self._lock:
            self._reserved.pop(name, None)
            self._entries[name] = _Entry(region)
        self._changed()

    # --- unregistration ----------------------------------------------------------------------

    async def unregister(self, kind: RegionKind, name: str) -> None:
        """Unregister region `name` of `kind` (every region of `kind` when `name` is empty).

        The name is free again at once; the call returns once no request uses the memory.
        Unregistering a name that is not registered does nothing, as in Triton.
        """
        with self._lock:
            names = [name] if name else list(self._entries)
            removed: list[_Entry] = []
            for each in names:
                entry = self._entries.get(each)
                if entry is None:
                    continue
                if kind_of(entry.region) is not kind:
                    if name:
                        raise InvalidArgument(
                            f"{kind.title} region '{name}': it is a "
                            f"{kind_of(entry.region).title} region; unregister it as one"
                        )
                    continue
                del self._entries[each]
                entry.unregistered = True
                removed.append(entry)
                if entry.leases:
                    self._draining.add(entry)
            idle = [e for e in removed if e.leases == 0]
        # Reported at once, as status reports it: not after the wait, which a caller that
        # goes away never finishes.
        self._changed()
        if idle:
            # Shielded: a caller that goes away must not leave regions that no name reaches
            # mapped for good.
            await asyncio.shield(asyncio.to_thread(self._close_each, idle))
        for entry in removed:
            if entry not in idle:
                await asyncio.to_thread(entry.closed.wait)

    def close_all(self) -> None:
        """Close every region (server shutdown, after the last request)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.unregistered = True
            if entry.leases == 0:
                self._close(entry)

    def _close_each(self, entries: Iterable[_Entry]) -> None:
        for entry in entries:
            self._close(entry)

    def _close(self, entry: _Entry) -> None:
        try:
            entry.region.close()
        finally:
            with self._lock:
                self._draining.discard(entry)
            entry.closed.set()

    # --- status ------------------------------------------------------------------------------

    def status(self, kind: RegionKind, name: str) -> list[SystemRegionStatus | CudaRegionStatus]:
        """The registered regions of `kind` (only `name` when given: NotFound if absent)."""
        with self._lock:
            regions = [e.region for e in self._entries.values() if kind_of(e.region) is kind]
        if not name:
            return [r.status for r in sorted(regions, key=lambda r: r.name)]
        found = [r for r in regions if r.name == name]
        if not found:
            raise NotFound(f"{kind.title} region '{name}': not registered")
        return [found[0].status]

    def totals(self) -> dict[RegionKind, tuple[int, int]]:
        """Regions and registered bytes, per kind."""
        with self._lock:
            totals = {kind: (0, 0) for kind in RegionKind}
            for entry in self._entries.values():
                kind = kind_of(entry.region)
                count, size = totals[kind]
                totals[kind] = (count + 1, size + entry.region.byte_size)
            return totals

    def _mapped_bytes(self) -> int:
        """Bytes of the regions mapped now: registered, or unregistered and still in use."""
        entries = [*self._entries.values(), *self._draining]
        return sum(e.region.byte_size for e in entries)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.totals())

    # --- leases ------------------------------------------------------------------------------

    def lease(self, wanted: Mapping[str, str]) -> Lease:
        """Hold the regions of one request, given as {region: the tensor that names it};
        NotFound naming the first unknown region and its tensor."""
        with self._lock:
            entries: dict[str, _Entry] = {}
            for name in wanted:
                entry = self._entries.get(name)
                if entry is None:
                    raise NotFound(
                        f"{wanted[name]}: shared_memory_region: expected a registered region, "
                        f"received '{name}' (see SystemSharedMemoryStatus and "
                        "CudaSharedMemoryStatus)"
                    )
                entries[name] = entry
            for entry in entries.values():
                entry.leases += 1
        lease = Lease(self, entries)
        try:
            for name, entry in entries.items():
                if isinstance(entry.region, SystemRegion):
                    entry.region.check_size(wanted[name])
        except BaseException:
            lease.release()
            raise
        return lease

    def _release(self, entries: Iterable[_Entry]) -> None:
        """End one lease of each entry; close those unregistered meanwhile (any thread)."""
        with self._lock:
            closing = []
            for entry in entries:
                entry.leases -= 1
                if entry.leases == 0 and entry.unregistered:
                    closing.append(entry)
        for entry in closing:
            self._close(entry)


class Lease:
    """The regions one request references, held until every holder released them.

    The data plane holds a lease for the whole call; `share()` adds a holder (the scheduler,
    which may still run a request whose caller went away). Each holder calls `release()` once.
    """

    def __init__(self, registry: SharedMemoryRegistry, entries: dict[str, _Entry]) -> None:
        self._registry = registry
        self._entries = entries
        self._holders = 1
        self._lock = threading.Lock()

    def region(self, name: str) -> Region:
        """A leased region by name."""
        return self._entries[name].region

    def kind(self, name: str) -> RegionKind:
        """The kind of a leased region."""
        return kind_of(self.region(name))

    def share(self) -> Callable[[], None]:
        """Add a holder; returns its release function."""
        with self._lock:
            self._holders += 1
        return self.release

    def release(self) -> None:
        """One holder is done; the last one releases the regions."""
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._registry._release(self._entries.values())
