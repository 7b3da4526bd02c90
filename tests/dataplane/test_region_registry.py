"""The shared-memory region registry: leases against unregistration, keys, names, limits, kinds.

System regions map objects of a temporary folder (the registry's `directory`), so these tests
touch nothing under /dev/shm and need no GPU: CUDA registrations are checked up to the point
where a handle would be opened.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from trtserve.server.dataplane import shared_memory
from trtserve.server.dataplane.shared_memory import (
    RegionKind,
    SharedMemoryLimits,
    SharedMemoryRegistry,
)
from trtserve.server.dataplane.system_region import SystemRegion, SystemRegionStatus
from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServerError,
)

T = TypeVar("T")
SYSTEM, CUDA = RegionKind.SYSTEM, RegionKind.CUDA
HANDLE = b"\x01" * 64
# Bounds every wait, so a lease that never ends fails the test instead of hanging it.
TIMEOUT_S = 10.0
Totals = dict[RegionKind, tuple[int, int]]


# Every registry entry the running test made (see `entries`).
_ENTRIES: list[shared_memory._Entry] = []


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on a new loop. Whatever happens, the threads that wait for regions to
    close are let go before the loop joins them: a lease that is never released fails the
    test instead of hanging it."""
    with asyncio.Runner() as runner:
        try:
            return runner.run(coroutine)
        finally:
            for entry in _ENTRIES:
                entry.closed.set()


@pytest.fixture(autouse=True)
def entries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Record the registry's entries in _ENTRIES (for `run`)."""

    class RecordedEntry(shared_memory._Entry):
        def __init__(self, region: shared_memory.Region) -> None:
            super().__init__(region)
            _ENTRIES.append(self)

    monkeypatch.setattr(shared_memory, "_Entry", RecordedEntry)
    yield
    _ENTRIES.clear()


def make_object(folder: Path, name: str, size: int) -> Path:
    """A shared-memory object stand-in: a file of `size` bytes counting 0..255."""
    path = folder / name
    path.write_bytes((np.arange(size) % 256).astype(np.uint8).tobytes())
    return path


def registry(
    folder: Path,
    max_regions: int = 8,
    max_bytes: int = 1 << 20,
    gpus: int = 0,
    changes: list[Totals] | None = None,
) -> SharedMemoryRegistry:
    on_change: Callable[[Totals], None] | None = None if changes is None else changes.append
    return SharedMemoryRegistry(
        SharedMemoryLimits(max_regions, max_bytes),
        gpu_count=lambda: gpus,
        on_change=on_change,
        directory=folder,
    )


def names(registry: SharedMemoryRegistry, kind: RegionKind = SYSTEM) -> list[str]:
    return [status.name for status in registry.status(kind, "")]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """The registry's folder of objects, holding `obj` (4096 bytes)."""
    make_object(tmp_path, "obj", 4096)
    return tmp_path


@pytest.fixture()
def closed(monkeypatch: pytest.MonkeyPatch) -> list[SystemRegion]:
    """Every system region closed during the test, in order."""
    regions: list[SystemRegion] = []
    close = SystemRegion.close

    def recording_close(self: SystemRegion) -> None:
        regions.append(self)
        close(self)

    monkeypatch.setattr(SystemRegion, "close", recording_close)
    return regions


def expect(error: type[ServerError], *named: str) -> Callable[[BaseException], None]:
    """A check that an error is `error` and its message names each of `named`."""

    def check(caught: BaseException) -> None:
        assert isinstance(caught, error), repr(caught)
        for part in named:
            assert part in str(caught), f"{part!r} not in {caught}"

    return check


async def refused(call: Coroutine[Any, Any, object], error: type[ServerError], *named: str) -> str:
    """Await `call`, expecting `error` naming each of `named`; the message."""
    try:
        await call
    except ServerError as caught:
        expect(error, *named)(caught)
        return str(caught)
    raise AssertionError(f"expected {error.__name__}, the call succeeded")


# --- unregistering a region in use ---------------------------------------------------------


def test_unregister_waits_for_the_lease_but_frees_the_name_at_once(
    folder: Path, closed: list[SystemRegion]
) -> None:
    async def scenario() -> None:
        changes: list[Totals] = []
        shm = registry(folder, changes=changes)
        await shm.register_system("r", "/obj", 0, 4096)
        lease = shm.lease({"r": "input 'INPUT0'"})
        old = lease.region("r")
        assert isinstance(old, SystemRegion)

        unregistering = asyncio.create_task(shm.unregister(SYSTEM, "r"))
        for _ in range(5):
            await asyncio.sleep(0)  # let the loop run the task, and others
        assert not unregistering.done(), "unregister returned while a request held the region"
        # The name is free already: status and metrics lack it, requests cannot lease it, and
        # it can be registered again (which runs a thread: the loop runs on meanwhile).
        assert names(shm) == []
        assert changes[-1][SYSTEM] == (0, 0), changes
        with pytest.raises(NotFound):
            shm.lease({"r": "input 'INPUT0'"})
        await shm.register_system("r", "/obj", 1024, 1024)
        assert shm.status(SYSTEM, "r") == [SystemRegionStatus("r", "/obj", 1024, 1024)]
        fresh = shm.lease({"r": "input 'INPUT0'"})
        assert fresh.region("r") is not old
        fresh.release()
        assert not unregistering.done()
        assert closed == []

        # The request still reads the old region's memory.
        expected = (np.arange(8) % 256).astype(np.uint8)
        np.testing.assert_array_equal(old.view(0, 8, "input 'INPUT0'"), expected)

        lease.release()  # the last lease closes the region, in the releasing thread
        assert closed == [old]
        await asyncio.wait_for(unregistering, TIMEOUT_S)
        # The region registered meanwhile is untouched, and goes with its own unregister.
        assert names(shm) == ["r"]
        await asyncio.wait_for(shm.unregister(SYSTEM, "r"), TIMEOUT_S)
        assert len(closed) == 2 and closed[1] is not old

    run(scenario())


def test_a_shared_lease_ends_with_its_last_holder(folder: Path, closed: list[SystemRegion]) -> None:
    async def scenario() -> None:
        shm = registry(folder)
        await shm.register_system("r", "obj", 0, 4096)
        lease = shm.lease({"r": "input 'INPUT0'"})
        scheduler_release = lease.share()
        unregistering = asyncio.create_task(shm.unregister(SYSTEM, "r"))
        await asyncio.sleep(0)
        lease.release()  # the data plane is done; the scheduler still runs the request
        await asyncio.to_thread(lambda: None)
        assert not unregistering.done()
        assert closed == []
        # The scheduler releases from its own thread.
        await asyncio.to_thread(scheduler_release)
        assert len(closed) == 1
        await asyncio.wait_for(unregistering, TIMEOUT_S)

    run(scenario())


def test_a_refused_lease_holds_nothing(folder: Path, closed: list[SystemRegion]) -> None:
    async def scenario() -> None:
        shm = registry(folder)
        await shm.register_system("a", "/obj", 0, 4096)
        with pytest.raises(NotFound) as caught:
            shm.lease({"a": "input 'INPUT0'", "gone": "requested output 'OUTPUT1'"})
        expect(NotFound, "requested output 'OUTPUT1'", "'gone'")(caught.value)
        # Region a was not left leased: closing every region closes it at once.
        shm.close_all()
        assert len(closed) == 1

    run(scenario())


def test_regions_unregistered_by_a_caller_that_left_are_closed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unregister (every region) is cancelled once it began: the regions it removed are still
    closed, not left mapped with no name to reach them by."""
    all_closed = threading.Event()
    closed: list[SystemRegion] = []
    close = SystemRegion.close

    def counting_close(self: SystemRegion) -> None:
        close(self)
        closed.append(self)
        if len(closed) == 3:
            all_closed.set()

    monkeypatch.setattr(SystemRegion, "close", counting_close)

    async def scenario() -> None:
        shm = registry(folder)
        for name in ("a", "b", "c"):
            await shm.register_system(name, "/obj", 0, 64)
        unregistering = asyncio.create_task(shm.unregister(SYSTEM, ""))
        await asyncio.sleep(0)  # it removed the names and began closing
        assert names(shm) == []
        unregistering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unregistering
        assert await asyncio.to_thread(all_closed.wait, TIMEOUT_S), f"closed only {closed}"

    run(scenario())


def test_close_all_closes_leased_regions_at_release(
    folder: Path, closed: list[SystemRegion]
) -> None:
    async def scenario() -> None:
        shm = registry(folder)
        await shm.register_system("idle", "/obj", 0, 4096)
        await shm.register_system("busy", "/obj", 0, 4096)
        lease = shm.lease({"busy": "input 'INPUT0'"})
        shm.close_all()
        assert [r.name for r in closed] == ["idle"]
        assert names(shm) == []
        lease.release()
        assert [r.name for r in closed] == ["idle", "busy"]

    run(scenario())


def test_a_registration_whose_caller_left_is_kept(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled RPC does not leave a mapping that no name holds: the region, valid as
    asked, is registered once it is made (and the name stays reserved until then)."""
    gate = threading.Event()

    class GatedRegion(SystemRegion):
        def __init__(self, *args: Any) -> None:
            assert gate.wait(TIMEOUT_S), "the test never opened the gate"
            super().__init__(*args)

    monkeypatch.setattr(shared_memory, "SystemRegion", GatedRegion)
    added = threading.Event()

    async def scenario() -> None:
        shm = SharedMemoryRegistry(
            SharedMemoryLimits(8, 1 << 20),
            gpu_count=lambda: 0,
            on_change=lambda totals: added.set(),
            directory=folder,
        )
        registering = asyncio.create_task(shm.register_system("r", "/obj", 0, 4096))
        for _ in range(3):
            await asyncio.sleep(0)
        registering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await registering
        await refused(shm.register_system("r", "/obj", 0, 64), InvalidArgument, "'r'")
        assert names(shm) == []
        gate.set()
        assert await asyncio.to_thread(added.wait, TIMEOUT_S), "the region was not registered"
        assert shm.status(SYSTEM, "r") == [SystemRegionStatus("r", "/obj", 0, 4096)]
        await shm.unregister(SYSTEM, "")

    try:
        run(scenario())
    finally:
        gate.set()


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["/../etc/passwd", "a/b", "../obj", "//obj", "/", "", ".", "/..", "ob\0j"]
)
def test_keys_other_than_a_plain_name_are_refused(folder: Path, key: str) -> None:
    async def scenario() -> None:
        shm = registry(folder, max_regions=1)
        await refused(shm.register_system("r", key, 0, 64), InvalidArgument, "'r'", repr(key))
        # The refusal held no place: the one region allowed can still be registered.
        await shm.register_system("r", "/obj", 0, 64)

    run(scenario())


def test_a_symbolic_link_is_refused(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = make_object(tmp_path_factory.mktemp("outside"), "secret", 4096)
    (folder / "inside-link").symlink_to(folder / "obj")
    (folder / "outside-link").symlink_to(outside)

    async def scenario() -> None:
        shm = registry(folder)
        for key in ("/inside-link", "/outside-link"):
            await refused(shm.register_system("r", key, 0, 64), InvalidArgument, key)
        assert names(shm) == []

    run(scenario())


def test_objects_that_are_not_regular_files_are_refused(folder: Path) -> None:
    (folder / "folder").mkdir()
    os.mkfifo(folder / "fifo")

    async def scenario() -> None:
        shm = registry(folder)
        await refused(shm.register_system("r", "/folder", 0, 64), InvalidArgument, "/folder")
        await refused(shm.register_system("r", "/fifo", 0, 64), InvalidArgument, "'/fifo'", "not a")
        await refused(shm.register_system("r", "/missing", 0, 64), NotFound, "'r'", "'/missing'")
        assert names(shm) == []

    run(scenario())


def test_the_range_must_lie_inside_the_object(folder: Path) -> None:
    async def scenario() -> None:
        shm = registry(folder)
        await refused(
            shm.register_system("r", "/obj", 100, 4000),
            InvalidArgument,
            "is 4096 bytes",
            "100 + 4000 = 4100",
        )
        await refused(shm.register_system("r", "/obj", 0, 0), InvalidArgument, "byte_size")
        await refused(shm.register_system("", "/obj", 0, 64), InvalidArgument, "name")
        # The whole object, and its last byte alone, are fine.
        await shm.register_system("all", "/obj", 0, 4096)
        await shm.register_system("last", "/obj", 4095, 1)
        assert names(shm) == ["all", "last"]

    run(scenario())


def test_views_count_from_the_registered_offset_and_stay_in_bounds(folder: Path) -> None:
    make_object(folder, "big", 20000)
    region = SystemRegion("r", "/big", 5000, 10000, folder)
    try:
        expected = (np.arange(5000, 5016) % 256).astype(np.uint8)
        np.testing.assert_array_equal(region.view(0, 16, "input 'X'"), expected)
        with pytest.raises(InvalidArgument) as caught:
            region.view(9990, 16, "input 'X'")
        expect(InvalidArgument, "input 'X'", "holds 10000 bytes", "9990 + byte size 16")(
            caught.value
        )
        # Writes land in the object.
        region.view(10, 2, "output 'Y'")[:] = [7, 9]
        with open(folder / "big", "rb") as f:
            f.seek(5010)
            assert f.read(2) == bytes([7, 9])
        # A client that shrinks the object: refused before any view is read (a read of the
        # lost pages would be SIGBUS). The registry checks it once per request, at the lease.
        os.truncate(folder / "big", 12000)
        with pytest.raises(InvalidArgument) as caught:
            region.check_size("input 'X'")
        expect(InvalidArgument, "input 'X'", "'r'", "shrank to 12000 bytes", "15000")(caught.value)
    finally:
        region.close()


# --- names, limits and kinds ---------------------------------------------------------------


def test_duplicate_names_are_refused_whatever_the_kind(folder: Path) -> None:
    async def scenario() -> None:
        shm = registry(folder, gpus=1)
        await shm.register_system("r", "/obj", 0, 4096)
        await refused(
            shm.register_system("r", "/obj", 0, 64), InvalidArgument, "'r'", "already registered"
        )
        await refused(shm.register_cuda("r", HANDLE, 0, 64), InvalidArgument, "'r'")
        assert shm.status(SYSTEM, "r") == [SystemRegionStatus("r", "/obj", 0, 4096)]

        # Two registrations of one name at once: the second sees the first's reservation.
        outcomes = await asyncio.gather(
            shm.register_system("twin", "/obj", 0, 64),
            shm.register_system("twin", "/obj", 0, 128),
            return_exceptions=True,
        )
        first, second = outcomes
        assert first is None and isinstance(second, BaseException), outcomes
        expect(InvalidArgument, "'twin'", "already registered")(second)
        assert shm.status(SYSTEM, "twin")[0].byte_size == 64

    run(scenario())


def test_limits_on_regions_and_bytes(folder: Path) -> None:
    async def scenario() -> None:
        shm = registry(folder, max_regions=2, max_bytes=8192)
        await shm.register_system("a", "/obj", 0, 4096)
        # Failed registrations hold no place.
        for _ in range(3):
            await refused(shm.register_system("b", "/missing", 0, 64), NotFound)
            await refused(shm.register_system("b", "/obj", 1, 4096), InvalidArgument)
        await refused(
            shm.register_system("b", "/obj", 0, 4097),
            ResourceExhausted,
            "'b'",
            "8193",
            "8192",
        )
        await shm.register_system("b", "/obj", 0, 4096)  # exactly at the byte limit
        await refused(shm.register_system("c", "/obj", 0, 1), ResourceExhausted, "'c'", "2 regions")
        await shm.unregister(SYSTEM, "b")
        # Registrations in progress count: of two at once, only one fits.
        outcomes = await asyncio.gather(
            shm.register_system("c", "/obj", 0, 64),
            shm.register_system("d", "/obj", 0, 64),
            return_exceptions=True,
        )
        first, second = outcomes
        assert first is None and isinstance(second, BaseException), outcomes
        expect(ResourceExhausted, "'d'")(second)
        assert names(shm) == ["a", "c"]

    run(scenario())


def test_changes_are_reported_per_kind(folder: Path) -> None:
    async def scenario() -> None:
        changes: list[Totals] = []
        shm = registry(folder, changes=changes)
        await shm.register_system("a", "/obj", 0, 4096)
        await shm.register_system("b", "/obj", 0, 100)
        await shm.unregister(SYSTEM, "a")
        assert changes == [
            {SYSTEM: (1, 4096), CUDA: (0, 0)},
            {SYSTEM: (2, 4196), CUDA: (0, 0)},
            {SYSTEM: (1, 100), CUDA: (0, 0)},
        ]

    run(scenario())


def test_unregister_by_kind(folder: Path, closed: list[SystemRegion]) -> None:
    async def scenario() -> None:
        shm = registry(folder)
        await shm.register_system("a", "/obj", 0, 64)
        await shm.register_system("b", "/obj", 0, 64)
        await refused(
            shm.unregister(CUDA, "a"),
            InvalidArgument,
            "'a'",
            "system shared-memory region",
        )
        await shm.unregister(CUDA, "")  # every CUDA region: there is none
        await shm.unregister(SYSTEM, "never-registered")
        assert names(shm) == ["a", "b"] and closed == []
        with pytest.raises(NotFound):
            shm.status(CUDA, "a")
        await shm.unregister(SYSTEM, "")
        assert names(shm) == [] and sorted(r.name for r in closed) == ["a", "b"]

    run(scenario())


# --- CUDA registrations without a GPU ------------------------------------------------------


def test_cuda_without_a_gpu(folder: Path) -> None:
    async def scenario() -> None:
        shm = registry(folder, gpus=0)
        await refused(
            shm.register_cuda("gpu", HANDLE, 0, 64), FailedPrecondition, "'gpu'", "no GPU"
        )
        assert names(shm, CUDA) == []

    run(scenario())


def test_cuda_arguments_are_checked_before_the_handle_is_opened(folder: Path) -> None:
    async def scenario() -> None:
        shm = registry(folder, gpus=1)
        await refused(
            shm.register_cuda("gpu", HANDLE, 3, 64),
            InvalidArgument,
            "'gpu'",
            "device_id",
            "0 to 0",
            "received 3",
        )
        await refused(
            shm.register_cuda("gpu", HANDLE[:63], 0, 64),
            InvalidArgument,
            "raw_handle",
            "64 bytes",
            "received 63",
        )
        await refused(shm.register_cuda("gpu", HANDLE, 0, 0), InvalidArgument, "byte_size")
        # None of them kept the name.
        assert names(shm, CUDA) == []
        await shm.register_system("gpu", "/obj", 0, 64)

    run(scenario())


def test_regions_unregistered_while_in_use_count_against_the_byte_limit(folder: Path) -> None:
    async def scenario() -> None:
        shm = registry(folder, max_bytes=4096)
        await shm.register_system("a", "/obj", 0, 4096)
        lease = shm.lease({"a": "input 'X'"})
        unregistering = asyncio.create_task(shm.unregister(RegionKind.SYSTEM, "a"))
        try:
            while shm.status(RegionKind.SYSTEM, ""):
                await asyncio.sleep(0)
            # Still mapped for the request: a region of the same size would exceed the limit.
            with pytest.raises(ResourceExhausted, match="over the limit 4096"):
                await shm.register_system("b", "/obj", 0, 4096)
        finally:
            lease.release()
            await unregistering
        await shm.register_system("b", "/obj", 0, 4096)
        await shm.unregister(RegionKind.SYSTEM, "")

    asyncio.run(scenario())
