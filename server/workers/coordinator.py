"""The supervisor's side of a change: every worker applies it, or none does.

Changes run one at a time (one lock), and a worker that starts or restarts holds the same lock
until it has joined, so it never misses a change: it is started with `ClusterState`, what every
worker serves at that moment. A worker that died during a change is skipped; it comes back with
the state the change left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import grpc

from trtserve.protocol import cluster_pb2 as pb
from trtserve.protocol import cluster_pb2_grpc
from trtserve.server.api.status import error_for_status
from trtserve.server.dataplane.shared_memory import RegionKind
from trtserve.server.errors import InvalidArgument
from trtserve.server.models.manager import UNLOADED
from trtserve.server.workers.spec import ClusterState

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")


@dataclass
class WorkerHandle:
    """A worker process the supervisor started, and its control channel."""

    index: int
    process: BaseProcess
    channel: grpc.aio.Channel
    stub: cluster_pb2_grpc.WorkerStub
    joined: asyncio.Future[None] = field(default_factory=asyncio.Future)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()


@dataclass(frozen=True)
class _Outcome:
    """One worker's answer to a change."""

    worker: WorkerHandle
    reply: Any = None
    error: grpc.aio.AioRpcError | None = None


class Coordinator:
    """Serves the Supervisor service: changes fanned out to the joined workers."""

    def __init__(self) -> None:
        self.state = ClusterState()
        # One change (or one worker joining) at a time.
        self.lock = asyncio.Lock()
        self.workers: dict[int, WorkerHandle] = {}
        # Set once every worker of the start has joined; their Join calls return then.
        self.started = asyncio.Event()

    # --- the Supervisor service ----------------------------------------------------------------

    async def Join(self, request: pb.JoinRequest, context: Any) -> pb.Done:
        handle = self.workers.get(request.worker)
        if handle is None or handle.process.pid != request.pid:
            raise InvalidArgument(
                f"worker: expected one of this server's workers, received index "
                f"{request.worker} with pid {request.pid}"
            )
        if not self.started.is_set() and request.worker == 0:
            # The first worker loaded the repository: the others serve what it serves.
            for model in request.serving:
                served = self.state.models.get(model.name, ())
                self.state.models[model.name] = tuple(sorted((*served, model.version)))
            self.state.unavailable.update({m.name: m.reason for m in request.unavailable})
        if not handle.joined.done():
            handle.joined.set_result(None)
        await self.started.wait()
        return pb.Done()

    async def Load(self, request: pb.ModelName, context: Any) -> pb.ModelVersions:
        async with self.lock:
            outcomes = await self._each(lambda w: w.stub.Prepare(request))
            prepared = [o.worker for o in outcomes if o.error is None]
            failed = [o for o in outcomes if o.error is not None]
            if failed:
                error = _relayed(failed)
                decision = pb.Decision(name=request.name, reason=str(error))
                await self._each(lambda w: w.stub.Abort(decision), prepared)
                raise error
            decision = pb.Decision(name=request.name)
            await self._each(lambda w: w.stub.Commit(decision), prepared)
            # Every worker built the same versions: the policy's, all of which must load.
            versions = tuple(outcomes[0].reply.versions) if outcomes else ()
            self.state.models[request.name] = versions
            self.state.unavailable.pop(request.name, None)
            log.info(
                "model %s versions %s loaded in %d workers",
                request.name,
                list(versions),
                len(prepared),
            )
            return pb.ModelVersions(name=request.name, versions=versions)

    async def Unload(self, request: pb.ModelName, context: Any) -> pb.Done:
        async with self.lock:
            self.state.models.pop(request.name, None)
            self.state.unavailable[request.name] = UNLOADED
            _raise_first(await self._each(lambda w: w.stub.Unload(request)))
            return pb.Done()

    async def RegisterSystem(self, request: pb.SystemRegion, context: Any) -> pb.Done:
        async with self.lock:
            await self._register(
                request.name, RegionKind.SYSTEM, lambda w: w.stub.RegisterSystem(request)
            )
            self.state.system_regions[request.name] = request
            return pb.Done()

    async def RegisterCuda(self, request: pb.CudaRegion, context: Any) -> pb.Done:
        async with self.lock:
            await self._register(
                request.name, RegionKind.CUDA, lambda w: w.stub.RegisterCuda(request)
            )
            self.state.cuda_regions[request.name] = request
            return pb.Done()

    async def Unregister(self, request: pb.RegionName, context: Any) -> pb.Done:
        async with self.lock:
            outcomes = await self._each(lambda w: w.stub.Unregister(request))
            _raise_first(outcomes)
            kind = RegionKind(request.kind)
            regions: dict[str, Any] = (
                self.state.system_regions if kind is RegionKind.SYSTEM else self.state.cuda_regions
            )
            if request.name:
                regions.pop(request.name, None)
            else:
                regions.clear()
            return pb.Done()

    # --- fan-out -----------------------------------------------------------------------------

    async def _register(
        self, name: str, kind: RegionKind, call: Callable[[WorkerHandle], Awaitable[Any]]
    ) -> None:
        """Register in every worker, or undo it in those that did when one refuses."""
        outcomes = await self._each(call)
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            done = [o.worker for o in outcomes if o.error is None]
            undo = pb.RegionName(kind=kind.value, name=name)
            await self._each(lambda w: w.stub.Unregister(undo), done)
            raise _relayed(failed)

    async def _each(
        self,
        call: Callable[[WorkerHandle], Awaitable[Any]],
        workers: Sequence[WorkerHandle] | None = None,
    ) -> list[_Outcome]:
        """Call every joined worker at once; a worker that died meanwhile is left out."""
        chosen = list(workers) if workers is not None else self._joined()
        replies = await asyncio.gather(*(call(w) for w in chosen), return_exceptions=True)
        outcomes = []
        for worker, reply in zip(chosen, replies, strict=True):
            if isinstance(reply, grpc.aio.AioRpcError):
                if not worker.alive:
                    log.warning(
                        "worker %d died during a change; it restarts with its outcome", worker.index
                    )
                    continue
                outcomes.append(_Outcome(worker, error=reply))
            elif isinstance(reply, BaseException):
                raise reply
            else:
                outcomes.append(_Outcome(worker, reply=reply))
        return outcomes

    def _joined(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.joined.done() and w.alive]


def _relayed(failed: Sequence[_Outcome]) -> Exception:
    """The first refusal, as the error it stands for, naming the worker that refused."""
    first = failed[0]
    assert first.error is not None
    message = first.error.details() or str(first.error.code())
    others = f" (and {len(failed) - 1} other workers)" if len(failed) > 1 else ""
    return error_for_status(first.error.code(), f"worker {first.worker.index}{others}: {message}")


def _raise_first(outcomes: Sequence[_Outcome]) -> None:
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise _relayed(failed)
