"""Assemble and run the server: gRPC services, health, reflection, REST, metrics, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import REGISTRY, CollectorRegistry

from trtserve.protocol import grpc_service_pb2, trtserve_pb2
from trtserve.protocol.allocator import reuse_freed_memory
from trtserve.server.api.auth import AccessGuard, AccessPolicy
from trtserve.server.api.health import SERVER_HEALTH_NAMES, GuardedHealthServicer
from trtserve.server.api.inference_servicer import InferenceServicer
from trtserve.server.api.registration import add_service
from trtserve.server.api.upload_servicer import UploadServicer
from trtserve.server.backends.base import Backend
from trtserve.server.backends.registry import make_backends, preload_runtimes
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.dataplane.serving_state import ServingState
from trtserve.server.dataplane.shared_memory import (
    RegionChanges,
    RegionKind,
    SharedMemoryLimits,
    SharedMemoryRegistry,
)
from trtserve.server.default_model import write_default_repository
from trtserve.server.limits import RequestLimits
from trtserve.server.metrics import ServerMetrics
from trtserve.server.model_state import ModelState
from trtserve.server.models.manager import ModelManager
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.rest.http_server import RestServer
from trtserve.server.runtime.cuda_device import cuda_device_count
from trtserve.server.settings import LOOPBACK_HOSTS, ServerSettings
from trtserve.server.tls import server_credentials, server_ssl_context
from trtserve.server.transport import (
    ConnectionLimit,
    bind_grpc,
    connection_limit,
    listen_http,
    server_options,
    start_metrics,
)

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_version() -> str:
    """The installed trtserve version."""
    try:
        return version("trtserve")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class RunningServer:
    """A started server and the ports it bound."""

    grpc_server: grpc.aio.Server
    grpc_port: int
    metrics_port: int
    # -1 when the REST port is off.
    http_port: int
    rest: RestServer | None
    manager: ModelManager
    state: ServingState
    health: Any
    settings: ServerSettings
    backends: dict[str, Backend]
    temporary_repository: Path | None
    plane: DataPlane

    async def drain_and_stop(self) -> None:
        """Turn unready, refuse new requests, let in-flight ones finish, then stop."""
        deadline = time.monotonic() + self.settings.grace_period_s
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        # The listener stays open while requests drain, so late callers get a clear
        # UNAVAILABLE from the servicer rather than a dropped connection.
        if not await self.state.wait_idle(self.settings.grace_period_s):
            log.warning("grace period over with inference requests still in flight")
        await self.grpc_server.stop(max(0.0, deadline - time.monotonic()))
        if self.rest is not None:
            await self.rest.stop()
        await self.manager.close()
        # After the models: no request can reference a region any more.
        await asyncio.to_thread(self.plane.shared_memory.close_all)
        for backend in self.backends.values():
            await asyncio.to_thread(backend.close)
        if self.temporary_repository is not None:
            shutil.rmtree(self.temporary_repository, ignore_errors=True)


def access_policy(settings: ServerSettings) -> AccessPolicy:
    """Who may call what, from the settings; logs what an operator should know about it."""
    policy = AccessPolicy.create(
        tokens_file=settings.auth_tokens_file,
        mutual_tls=settings.tls_client_ca is not None,
        client_roles=settings.tls_client_roles,
        insecure_local_admin=settings.insecure_local_admin,
    )
    if settings.insecure_local_admin:
        log.warning(
            "insecure_local_admin: every caller may load, unload and upload models; "
            "bound to %s only",
            settings.bind_host,
        )
    elif not policy.credentials_configured:
        log.info(
            "no credentials configured: inference is open, load/unload/upload are refused "
            "(see --auth-tokens-file, --tls-client-ca, --insecure-local-admin)"
        )
    elif settings.tls_cert is None and settings.bind_host not in LOOPBACK_HOSTS:
        log.warning("bearer tokens travel in plain text: serve with --tls-cert and --tls-key")
    return policy


def request_limits(settings: ServerSettings) -> RequestLimits:
    """The API layer's limits, from the settings."""
    return RequestLimits.create(
        max_tensor_elements=settings.max_tensor_elements,
        max_upload_bytes=settings.max_upload_mb * 1024 * 1024,
        max_concurrent_uploads=settings.max_concurrent_uploads,
        upload_idle_timeout_s=settings.upload_idle_timeout_s,
        max_bytes_elements=settings.max_bytes_elements,
        max_stream_in_flight=settings.max_stream_in_flight,
    )


def shared_memory_registry(
    settings: ServerSettings, metrics: ServerMetrics, gpus: int
) -> SharedMemoryRegistry:
    """The registry of shared-memory regions, its limits from the settings."""

    def publish(totals: dict[RegionKind, tuple[int, int]]) -> None:
        for kind, (regions, nbytes) in totals.items():
            metrics.set_shared_memory(kind.value, regions, nbytes)

    limits = SharedMemoryLimits(
        settings.max_shared_memory_regions, settings.max_shared_memory_mb << 20
    )
    registry = SharedMemoryRegistry(limits, lambda: gpus, publish)
    publish(registry.totals())
    return registry


def open_repository(settings: ServerSettings) -> tuple[ModelRepository, Path | None]:
    """The configured repository, or a temporary one holding the built-in models."""
    if settings.repository is not None:
        return ModelRepository(settings.repository), None
    root = Path(tempfile.mkdtemp(prefix="trtserve-default-repository-"))
    names = write_default_repository(root)
    log.info("no repository given: serving the built-in models %s from %s", names, root)
    return ModelRepository(root), root


@dataclass
class ServerParts:
    """A server assembled but not started: no port bound, no model loaded."""

    settings: ServerSettings
    grpc_server: grpc.aio.Server
    credentials: grpc.ServerCredentials | None
    # None when the REST port is off.
    rest: RestServer | None
    registry: CollectorRegistry
    metrics: ServerMetrics
    manager: ModelManager
    state: ServingState
    health: GuardedHealthServicer
    backends: dict[str, Backend]
    temporary_repository: Path | None
    plane: DataPlane

    def running(self, grpc_port: int, metrics_port: int, http_port: int) -> RunningServer:
        """The started server, once its ports are bound."""
        return RunningServer(
            self.grpc_server,
            grpc_port,
            metrics_port,
            http_port,
            self.rest,
            self.manager,
            self.state,
            self.health,
            self.settings,
            self.backends,
            self.temporary_repository,
            self.plane,
        )

    def bind(self) -> int:
        """Add the gRPC port (shared with the other workers when there are several)."""
        address = f"{self.settings.bind_host}:{self.settings.grpc_port}"
        return bind_grpc(self.grpc_server, address, self.credentials)

    async def start_http(self) -> int:
        """Serve REST on the HTTP port (shared with the other workers); its number, -1 if off."""
        if self.rest is None:
            return -1
        settings = self.settings
        listener = listen_http(settings.bind_host, settings.http_port, settings.workers > 1)
        try:
            return await self.rest.start(listener, _ssl_context(settings))
        except BaseException:
            listener.close()
            raise

    async def abandon(self) -> None:
        """Undo a start that failed part way: stop what started, remove the temporary
        repository. Every step runs even when one before it fails."""
        with contextlib.suppress(Exception):
            await self.grpc_server.stop(0)
        if self.rest is not None:
            with contextlib.suppress(Exception):
                await self.rest.stop()
        with contextlib.suppress(Exception):
            await self.manager.close()
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(backend.close)
        if self.temporary_repository is not None:
            shutil.rmtree(self.temporary_repository, ignore_errors=True)

    async def mark_ready(self) -> None:
        """Answer ready: to ServerReady and to the overall health check."""
        self.state.ready = True
        for name in SERVER_HEALTH_NAMES:
            await self.health.set(name, _SERVING)


async def build_server(
    settings: ServerSettings,
    registry: CollectorRegistry = REGISTRY,
    *,
    region_changes: RegionChanges | None = None,
    worker: int | None = None,
    counts_folder: Path | None = None,
) -> ServerParts:
    """Everything a server is made of, from its settings; nothing bound, nothing loaded.

    `region_changes`: where shared-memory registrations go (default: this process's registry;
    a worker sends them through its supervisor to every worker); `worker`: the process's
    index among the server's workers; `counts_folder`: where the workers keep their request
    counts (metrics and ModelStatistics sum them); None: this process's own.
    """
    # Credentials first: a bad token or certificate file stops the start before any work.
    policy = access_policy(settings)
    credentials = _credentials(settings)
    metrics = ServerMetrics(registry, counts_folder=counts_folder)
    backends = make_backends(settings, registry)
    await asyncio.to_thread(preload_runtimes, settings, backends)
    repository, temporary_repository = open_repository(settings)
    manager = ModelManager(
        repository,
        backends,
        metrics,
        default_max_queue_size=settings.max_queue_size,
        max_inline_execution_us=settings.max_inline_execution_us,
    )
    health_servicer = GuardedHealthServicer(policy)
    manager.on_state_change = _model_health(health_servicer)
    state = ServingState()
    gpus = await asyncio.to_thread(cuda_device_count)
    plane = DataPlane(
        manager,
        metrics,
        state,
        server_version(),
        request_limits(settings),
        shared_memory_registry(settings, metrics, gpus),
        gpus,
        region_changes,
        worker,
    )
    connections = connection_limit(settings)
    server = _grpc_server(settings, plane, health_servicer, policy, connections)
    rest = None
    if settings.http_port >= 0:
        max_body = settings.max_message_mb * 1024 * 1024
        rest = RestServer(
            plane, policy, max_body, settings.grace_period_s, connections.max_connections
        )
    return ServerParts(
        settings,
        server,
        credentials,
        rest,
        registry,
        metrics,
        manager,
        state,
        health_servicer,
        backends,
        temporary_repository,
        plane,
    )


async def start_server(
    settings: ServerSettings, registry: CollectorRegistry = REGISTRY
) -> RunningServer:
    """Load the repository and start serving; returns once the ports are bound."""
    parts = await build_server(settings, registry)
    try:
        grpc_port = parts.bind()
        metrics_port = _start_metrics(settings, registry)
        # Before the first call: recovery must not mistake a change in progress for debris.
        await parts.manager.recover()
        await parts.grpc_server.start()
        http_port = await parts.start_http()
        await parts.manager.load_all()
        await parts.mark_ready()
    except BaseException:
        await parts.abandon()
        raise
    return parts.running(grpc_port, metrics_port, http_port)


def _ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    files = settings.tls_files
    if files is None:
        return None
    return server_ssl_context(*files, settings.tls_client_ca)


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    files = settings.tls_files
    if files is None:
        return None
    return server_credentials(*files, settings.tls_client_ca)


def _model_health(health_servicer: GuardedHealthServicer) -> Callable[[str, ModelState], None]:
    """A state-change callback that keeps each model's health status current."""
    loop = asyncio.get_running_loop()
    updates: set[asyncio.Task[None]] = set()

    def on_state_change(model: str, model_state: ModelState) -> None:
        status = _SERVING if model_state == ModelState.READY else _NOT_SERVING
        task = loop.create_task(health_servicer.set(model, status))
        updates.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(updates.discard)

    return on_state_change


def _grpc_server(
    settings: ServerSettings,
    plane: DataPlane,
    health_servicer: GuardedHealthServicer,
    policy: AccessPolicy,
    connections: ConnectionLimit,
) -> grpc.aio.Server:
    """The gRPC server with every service registered, its port not bound yet."""
    log.info(
        "accepting up to %d gRPC connections, and as many HTTP ones (open-file limit %d)",
        connections.max_connections,
        connections.fd_limit,
    )
    server = grpc.aio.server(options=server_options(settings, connections))
    services = (
        (InferenceServicer(plane), grpc_service_pb2, "GRPCInferenceService"),
        (UploadServicer(plane), trtserve_pb2, "ModelUpload"),
        (health_servicer, health_pb2, "Health"),
    )
    # Every method of these services is wrapped once, here, by the access policy and the
    # error mapping (the policy leaves health open: probes carry no credentials). Reflection
    # is open to every caller.
    guard = AccessGuard(policy).wrap
    names = [reflection.SERVICE_NAME]
    for servicer, module, name in services:
        service = module.DESCRIPTOR.services_by_name[name]
        add_service(server, servicer, service, guard)
        names.append(service.full_name)
    modules = [reflection_pb2, *(module for _servicer, module, _name in services)]
    reflection.enable_server_reflection(names, server, pool=_reflection_pool(modules))
    return server


def _reflection_pool(modules: Sequence[Any]) -> descriptor_pool.DescriptorPool:
    """A pool of every served file and what it imports, for reflection to answer from.

    trtserve's protocol files live in a pool of their own (trtserve.protocol.descriptor_pool),
    health and reflection in protobuf's default one; reflection reads a single pool.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for module in modules:
        add(module.DESCRIPTOR)
    return pool


def _start_metrics(settings: ServerSettings, registry: CollectorRegistry) -> int:
    if settings.metrics_port < 0:
        return -1
    host = settings.metrics_bind_host
    if host != settings.bind_host:
        log.info("metrics on %s (model names are in its labels; see --metrics-host)", host)
    return start_metrics(host, settings.metrics_port, registry)


def announce_ready(
    settings: ServerSettings, grpc_port: int, metrics_port: int, http_port: int, models: list[str]
) -> None:
    """Print the ready line; tests and scripts read the bound ports from it (0 = any)."""
    tls = " (TLS)" if settings.tls_files is not None else ""
    http = f"HTTP on {settings.bind_host}:{http_port}{tls}" if http_port >= 0 else "HTTP off"
    metrics = (
        f"metrics on {settings.metrics_bind_host}:{metrics_port}"
        if metrics_port >= 0
        else "metrics off"
    )
    print(
        f"trtserve: serving gRPC on {settings.bind_host}:{grpc_port}{tls}, {http}, {metrics}, "
        f"models {models}",
        flush=True,
    )


async def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM or SIGINT, then drain; the exit status."""
    # A setting of the whole process, so it is made here and not in start_server.
    if reuse_freed_memory(settings.malloc_keep_mb << 20):
        log.info("allocator keeps up to %d MiB of freed memory for reuse", settings.malloc_keep_mb)
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = sorted({m.name for m in running.manager.serving_models()})
    announce_ready(settings, running.grpc_port, running.metrics_port, running.http_port, ready)
    await stop.wait()
    log.info("shutting down: draining for up to %.1f s", settings.grace_period_s)
    await running.drain_and_stop()
    log.info("stopped")
    return 0
