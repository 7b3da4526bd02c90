"""One worker process of `serve --workers N`: the whole server, on a port it shares.

A worker differs from a lone server in four ways. It loads before it binds, so the port only
ever hands connections to a worker that serves. It joins its supervisor and answers ready once
every starting worker has joined. A client's model or region change goes to the supervisor,
which applies it to every worker through each one's `WorkerServicer`. Its metrics are written
to files the supervisor's /metrics sums (request counts: counts_files; gauges:
prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import grpc

from trtserve.protocol import cluster_pb2
from trtserve.protocol.allocator import reuse_freed_memory
from trtserve.server.api.registration import add_service
from trtserve.server.app import ServerParts, build_server
from trtserve.server.logging_setup import configure_logging
from trtserve.server.settings import ServerSettings
from trtserve.server.workers.spec import (
    MULTIPROC_ENV,
    ClusterState,
    WorkerSpec,
    private_socket,
)
from trtserve.server.workers.supervisor_link import SupervisorLink
from trtserve.server.workers.worker_servicer import (
    WorkerServicer,
    register_cuda,
    register_system,
)

log = logging.getLogger(__name__)

# How often a worker writes its request counts and pending-request gauges for the other
# workers' ModelStatistics and the supervisor's /metrics: what another worker reads lags by
# at most this (a worker's own reads are current).
PUBLISH_S = 0.05


def run_worker(settings: ServerSettings, spec: WorkerSpec) -> None:
    """A worker process's entry point (started by the supervisor with multiprocessing)."""
    configure_logging(settings.log_level, settings.log_format, worker=spec.index)
    reuse_freed_memory(settings.malloc_keep_mb << 20)
    try:
        asyncio.run(_serve(settings, spec))
    except Exception:
        log.exception("worker %d failed", spec.index)
        sys.exit(1)


async def _serve(settings: ServerSettings, spec: WorkerSpec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    link = SupervisorLink(spec.supervisor_address)
    # Metrics and ModelStatistics sum every worker's files, those of workers gone included.
    parts = await build_server(
        settings,
        region_changes=link,
        worker=spec.index,
        counts_folder=Path(os.environ[MULTIPROC_ENV]),
    )
    parts.manager.changes = link
    control = grpc.aio.server()
    service = cluster_pb2.DESCRIPTOR.services_by_name["Worker"]
    servicer = WorkerServicer(parts.manager, parts.plane.shared_memory)
    add_service(control, servicer, service, private_socket)
    control.add_insecure_port(spec.address)
    await control.start()
    await _load(parts, spec.join)
    grpc_port = parts.bind()
    await parts.grpc_server.start()
    http_port = await parts.start_http()
    await link.join(spec.index, os.getpid(), parts.manager)
    await parts.mark_ready()
    log.info("worker %d serving on port %d", spec.index, grpc_port)
    publisher = asyncio.create_task(_publish(parts))
    await stop.wait()
    publisher.cancel()
    await parts.running(grpc_port, -1, http_port).drain_and_stop()
    parts.metrics.publish_counts()  # the drained requests' counts too
    await control.stop(None)
    await link.close()


async def _load(parts: ServerParts, join: ClusterState | None) -> None:
    """What the first worker finds in the repository, or exactly what the others serve."""
    if join is None:
        await parts.manager.load_all()
        return
    registry = parts.plane.shared_memory
    for system in join.system_regions.values():
        await register_system(registry, system)
    for cuda in join.cuda_regions.values():
        await register_cuda(registry, cuda)
    parts.manager.mark_unavailable(join.unavailable)
    await parts.manager.load_versions(join.models)


async def _publish(parts: ServerParts) -> None:
    # Request counts are kept in memory and pending-request counts read through a function,
    # so both are written to the files on a clock.
    while True:
        parts.metrics.publish_pending()
        # Off the loop: the file write (a few hundred µs) must not hold up requests. A failed
        # write is logged and tried again.
        await asyncio.to_thread(parts.metrics.publish_counts)
        await asyncio.sleep(PUBLISH_S)
