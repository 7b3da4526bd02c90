"""The supervisor's fan-out: a change lands in every worker or in none.

Workers here are stand-ins for the control stubs (what a worker answers is all the coordinator
sees); tests/hardening/test_workers.py runs the same paths through real worker processes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from trtserve.protocol import cluster_pb2 as pb
from trtserve.server.errors import AlreadyExists, FailedPrecondition
from trtserve.server.workers.coordinator import Coordinator, WorkerHandle


@dataclass
class FakeProcess:
    pid: int
    alive: bool = True

    def is_alive(self) -> bool:
        return self.alive


@dataclass
class FakeWorker:
    """A worker's control service: records every call, refuses those it is told to."""

    refuse: dict[str, grpc.StatusCode] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    versions: tuple[int, ...] = (2, 3)
    # The process that dies when the refused call arrives (a worker killed mid-change).
    dies: FakeProcess | None = None

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any) -> Any:
            self.calls.append((method, request.name))
            if method in self.refuse:
                if self.dies is not None:
                    self.dies.alive = False
                raise grpc.aio.AioRpcError(
                    self.refuse[method],
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    f"{method} refused: no room",
                )
            return pb.ModelVersions(name=request.name, versions=self.versions)

        return call


def coordinator_of(*workers: FakeWorker, dead: tuple[int, ...] = ()) -> Coordinator:
    coordinator = Coordinator()
    for index, worker in enumerate(workers):
        process = FakeProcess(1000 + index, alive=index not in dead)
        handle = WorkerHandle(index, process, None, worker)  # type: ignore[arg-type]
        handle.joined.set_result(None)
        coordinator.workers[index] = handle
    return coordinator


def methods(worker: FakeWorker) -> list[str]:
    return [method for method, _name in worker.calls]


def test_a_load_prepared_everywhere_is_committed_everywhere() -> None:
    workers = FakeWorker(), FakeWorker(), FakeWorker()

    async def main() -> tuple[pb.ModelVersions, dict[str, tuple[int, ...]]]:
        coordinator = coordinator_of(*workers)
        reply = await coordinator.Load(pb.ModelName(name="m"), None)
        return reply, coordinator.state.models

    reply, models = asyncio.run(main())
    assert list(reply.versions) == [2, 3]
    assert models == {"m": (2, 3)}
    assert all(methods(w) == ["Prepare", "Commit"] for w in workers)


def test_a_load_one_worker_cannot_prepare_is_aborted_in_the_others() -> None:
    refusing = FakeWorker(refuse={"Prepare": grpc.StatusCode.FAILED_PRECONDITION})
    workers = FakeWorker(), refusing, FakeWorker()

    async def main() -> Coordinator:
        coordinator = coordinator_of(*workers)
        coordinator.state.models["m"] = (2,)
        with pytest.raises(FailedPrecondition) as raised:
            await coordinator.Load(pb.ModelName(name="m"), None)
        assert str(raised.value) == "worker 1: Prepare refused: no room"
        return coordinator

    coordinator = asyncio.run(main())
    # Nobody commits; those that prepared abort; the cluster still serves version 2.
    assert methods(workers[0]) == ["Prepare", "Abort"]
    assert methods(workers[2]) == ["Prepare", "Abort"]
    assert methods(refusing) == ["Prepare"]
    assert coordinator.state.models == {"m": (2,)}


def test_a_worker_that_dies_during_a_change_is_left_out_of_it() -> None:
    dying = FakeWorker(refuse={"Prepare": grpc.StatusCode.UNAVAILABLE})
    workers = FakeWorker(), dying

    async def main() -> dict[str, tuple[int, ...]]:
        coordinator = coordinator_of(*workers)
        process = coordinator.workers[1].process
        assert isinstance(process, FakeProcess)
        dying.dies = process
        await coordinator.Load(pb.ModelName(name="m"), None)
        return coordinator.state.models

    # The change commits in the others; the dead worker restarts with its outcome.
    assert asyncio.run(main()) == {"m": (2, 3)}
    assert methods(workers[0]) == ["Prepare", "Commit"]
    assert methods(dying) == ["Prepare"]


def test_a_dead_worker_is_not_called() -> None:
    workers = FakeWorker(), FakeWorker()

    async def main() -> None:
        await coordinator_of(*workers, dead=(1,)).Unload(pb.ModelName(name="m"), None)

    asyncio.run(main())
    assert methods(workers[0]) == ["Unload"]
    assert methods(workers[1]) == []


def test_a_region_one_worker_refuses_is_unregistered_in_the_others() -> None:
    refusing = FakeWorker(refuse={"RegisterSystem": grpc.StatusCode.ALREADY_EXISTS})
    workers = FakeWorker(), refusing

    async def main() -> Coordinator:
        coordinator = coordinator_of(*workers)
        region = pb.SystemRegion(name="r", key="/k", offset=0, byte_size=64)
        with pytest.raises(AlreadyExists, match="worker 1"):
            await coordinator.RegisterSystem(region, None)
        return coordinator

    coordinator = asyncio.run(main())
    assert workers[0].calls == [("RegisterSystem", "r"), ("Unregister", "r")]
    assert coordinator.state.system_regions == {}


def test_an_unload_is_remembered_for_workers_that_join_later() -> None:
    workers = FakeWorker(), FakeWorker()

    async def main() -> Coordinator:
        coordinator = coordinator_of(*workers)
        coordinator.state.models["m"] = (1,)
        await coordinator.Unload(pb.ModelName(name="m"), None)
        return coordinator

    coordinator = asyncio.run(main())
    assert coordinator.state.models == {}
    assert coordinator.state.unavailable == {"m": "unloaded"}
    assert all(methods(w) == ["Unload"] for w in workers)


def test_the_first_worker_to_join_sets_what_the_others_load() -> None:
    async def main() -> Coordinator:
        coordinator = Coordinator()
        handle = WorkerHandle(0, FakeProcess(1000), None, FakeWorker())  # type: ignore[arg-type]
        coordinator.workers[0] = handle
        join = pb.JoinRequest(worker=0, pid=1000)
        join.serving.add(name="a", version=4)
        join.serving.add(name="a", version=2)
        join.unavailable.add(name="b", reason="bad config")
        answered = asyncio.ensure_future(coordinator.Join(join, None))
        await asyncio.wait_for(asyncio.shield(handle.joined), 5)
        assert not answered.done(), "Join answered before every starting worker joined"
        coordinator.started.set()
        await asyncio.wait_for(answered, 5)
        return coordinator

    coordinator = asyncio.run(main())
    assert coordinator.state.models == {"a": (2, 4)}
    assert coordinator.state.unavailable == {"b": "bad config"}


def test_a_join_from_an_unknown_process_is_refused() -> None:
    async def main() -> None:
        coordinator = Coordinator()
        coordinator.workers[0] = WorkerHandle(0, FakeProcess(1000), None, FakeWorker())  # type: ignore[arg-type]
        with pytest.raises(Exception, match="received index 0 with pid 999"):
            await coordinator.Join(pb.JoinRequest(worker=0, pid=999), None)

    asyncio.run(main())
