"""`trtserve serve --workers N`: the process that starts N workers on one port and keeps them.

The supervisor serves no request itself. It checks that no other process listens on the gRPC
and HTTP ports, prepares what the workers share (the repository, recovered once; a private run
folder with the control sockets and the metrics files), starts the workers, applies every
client's model or region change to all of them (`Coordinator`), serves /metrics summed over the
workers, restarts a worker that dies, and on SIGTERM lets every worker drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from trtserve.protocol import cluster_pb2
from trtserve.server.api.registration import add_service
from trtserve.server.app import announce_ready, open_repository
from trtserve.server.counts_files import read_counts
from trtserve.server.metrics import CountsCollector
from trtserve.server.repository.transaction import recover_interrupted
from trtserve.server.settings import ServerSettings
from trtserve.server.transport import claim_port, start_metrics
from trtserve.server.workers.coordinator import Coordinator
from trtserve.server.workers.pool import WorkerFailed, WorkerPool
from trtserve.server.workers.spec import (
    METRICS_FOLDER,
    MULTIPROC_ENV,
    SUPERVISOR_SOCKET,
    private_socket,
    socket_address,
)

log = logging.getLogger(__name__)


async def supervise(settings: ServerSettings) -> int:
    """Run the workers until SIGTERM or SIGINT, then drain them; the exit status."""
    port = claim_port(settings.bind_host, settings.grpc_port)
    http_port = (
        claim_port(settings.bind_host, settings.http_port, "http_port")
        if settings.http_port >= 0
        else -1
    )
    run_dir = Path(tempfile.mkdtemp(prefix="trtserve-workers-"))  # mode 0700
    metrics_dir = run_dir / METRICS_FOLDER
    metrics_dir.mkdir()
    # Read by prometheus-client when a worker imports it: each worker writes its metrics there.
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    try:
        return await _supervise(settings, port, http_port, run_dir, metrics_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def _supervise(
    settings: ServerSettings, port: int, http_port: int, run_dir: Path, metrics_dir: Path
) -> int:
    metrics_port = _start_metrics(settings, metrics_dir)
    repository, temporary_repository = open_repository(settings)
    # Once, before any worker runs: a worker's change in progress is not debris.
    await asyncio.to_thread(recover_interrupted, repository)
    worker_settings = dataclasses.replace(
        settings, grpc_port=port, http_port=http_port, metrics_port=-1, repository=repository.root
    )
    coordinator = Coordinator()
    control = grpc.aio.server()
    service = cluster_pb2.DESCRIPTOR.services_by_name["Supervisor"]
    add_service(control, coordinator, service, private_socket)
    control.add_insecure_port(socket_address(run_dir / SUPERVISOR_SOCKET))
    await control.start()
    pool = WorkerPool(worker_settings, run_dir, coordinator, metrics_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if not await _started(pool, settings.workers, stop):
            return 1
        log.info("%d workers serving, pids %s", settings.workers, pool.pids())
        announce_ready(settings, port, metrics_port, http_port, sorted(coordinator.state.models))
        await stop.wait()
        log.info("shutting down: draining every worker for up to %.1f s", settings.grace_period_s)
        return 0
    finally:
        await pool.stop(settings.grace_period_s)
        await control.stop(None)
        if temporary_repository is not None:
            shutil.rmtree(temporary_repository, ignore_errors=True)
        log.info("stopped")


async def _started(pool: WorkerPool, count: int, stop: asyncio.Event) -> bool:
    """Start the workers; False when one failed to start or a signal came first."""
    start = asyncio.create_task(pool.start(count))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not start.done():
        start.cancel()
        return False
    try:
        start.result()
    except WorkerFailed as error:
        print(f"trtserve serve: {error}", flush=True)
        return False
    return True


def _start_metrics(settings: ServerSettings, metrics_dir: Path) -> int:
    """/metrics on the supervisor's port: every worker's metrics, summed by the files."""
    if settings.metrics_port < 0:
        return -1
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    registry.register(CountsCollector(lambda: read_counts(metrics_dir)))
    return start_metrics(settings.metrics_bind_host, settings.metrics_port, registry)
