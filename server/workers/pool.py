"""The worker processes: started, watched, restarted when they die, stopped on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import multiprocessing
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import multiprocess

from trtserve.protocol import cluster_pb2_grpc
from trtserve.server.settings import ServerSettings
from trtserve.server.workers.coordinator import Coordinator, WorkerHandle
from trtserve.server.workers.spec import ClusterState, WorkerSpec, worker_socket
from trtserve.server.workers.worker import run_worker

log = logging.getLogger(__name__)

# Seconds between attempts to restart a worker that keeps failing to start, doubling up to this.
RESTART_DELAY_MAX_S = 30.0
# Seconds past the grace period before a worker that did not stop is killed.
STOP_MARGIN_S = 5.0


class WorkerFailed(RuntimeError):
    """A worker exited before it served; the message names it and its exit status."""


class WorkerPool:
    """N workers of one server; each is restarted with the cluster's state when it dies."""

    def __init__(
        self,
        settings: ServerSettings,
        run_dir: Path,
        coordinator: Coordinator,
        metrics_dir: Path,
    ) -> None:
        self._settings = settings
        self._run_dir = run_dir
        self._coordinator = coordinator
        self._metrics_dir = metrics_dir
        # spawn, not fork: the supervisor runs an event loop and grpc threads.
        self._context = multiprocessing.get_context("spawn")
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self, count: int) -> None:
        """Start `count` workers: the first loads the repository, the rest what it serves."""
        async with self._coordinator.lock:
            first = self._spawn(0, None)
            await self._until_joined(first)
            state = self._coordinator.state
            rest = [self._spawn(i, state) for i in range(1, count)]
            await asyncio.gather(*(self._until_joined(w) for w in rest))
        self._coordinator.started.set()
        for worker in (first, *rest):
            self._watch(worker)

    async def stop(self, grace_period_s: float) -> None:
        """SIGTERM every worker (each drains), and kill those still running after the grace."""
        self._stopping = True
        for watcher in list(self._watchers):
            watcher.cancel()
        workers = list(self._coordinator.workers.values())
        for worker in workers:
            if worker.alive:
                worker.process.terminate()
        deadline = grace_period_s + STOP_MARGIN_S
        for worker in workers:
            try:
                await asyncio.wait_for(exited(worker.process), deadline)
            except TimeoutError:
                log.warning("worker %d did not stop within %.0f s: killed", worker.index, deadline)
                worker.process.kill()
                await exited(worker.process)
            await worker.channel.close(None)

    def pids(self) -> list[int]:
        """The workers' process ids, by index."""
        workers = sorted(self._coordinator.workers.values(), key=lambda w: w.index)
        return [w.process.pid or 0 for w in workers]

    def _spawn(self, index: int, state: ClusterState | None) -> WorkerHandle:
        socket = worker_socket(self._run_dir, index)
        socket.unlink(missing_ok=True)
        # A copy: the state changes after this start, and the worker must join this one.
        spec = WorkerSpec(index, self._run_dir, copy.deepcopy(state))
        process = self._context.Process(
            target=run_worker, args=(self._settings, spec), name=f"trtserve-worker-{index}"
        )
        process.start()
        channel = grpc.aio.insecure_channel(spec.address)
        handle = WorkerHandle(index, process, channel, cluster_pb2_grpc.WorkerStub(channel))
        self._coordinator.workers[index] = handle
        log.info("worker %d started, pid %s", index, process.pid)
        return handle

    async def _until_joined(self, worker: WorkerHandle) -> None:
        """Wait until the worker serves; WorkerFailed if it exits first."""
        exit_wait = asyncio.ensure_future(exited(worker.process))
        either: set[asyncio.Future[Any]] = {worker.joined, exit_wait}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exit_wait.cancel()
        if not worker.joined.done():
            raise WorkerFailed(
                f"worker {worker.index} (pid {worker.process.pid}) exited with status "
                f"{worker.process.exitcode} before it served; its log above says why"
            )

    def _watch(self, worker: WorkerHandle) -> None:
        task = asyncio.create_task(self._restart_when_dead(worker))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _restart_when_dead(self, worker: WorkerHandle) -> None:
        await exited(worker.process)
        if self._stopping:
            return
        log.warning(
            "worker %d (pid %s) exited with status %s: restarting it",
            worker.index,
            worker.process.pid,
            worker.process.exitcode,
        )
        # Its counters stay in the files; its live gauges go.
        multiprocess.mark_process_dead(worker.process.pid, str(self._metrics_dir))
        await worker.channel.close(None)
        delay = 1.0
        while not self._stopping:
            async with self._coordinator.lock:
                replacement = self._spawn(worker.index, self._coordinator.state)
                try:
                    await self._until_joined(replacement)
                except WorkerFailed as error:
                    log.error("%s; trying again in %.0f s", error, delay)
                    multiprocess.mark_process_dead(replacement.process.pid, str(self._metrics_dir))
                    await replacement.channel.close(None)
                else:
                    log.info("worker %d is back, pid %s", worker.index, replacement.process.pid)
                    self._watch(replacement)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)


async def exited(process: BaseProcess) -> int | None:
    """Wait, without blocking the loop, until the process has exited; its exit status."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(process.sentinel, on_ready)
    try:
        await done
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(process.sentinel)
    process.join()
    return process.exitcode
