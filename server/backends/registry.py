"""The backends a server offers, built from its settings, and their runtimes preloaded."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from trtserve.server.backends.base import Backend
from trtserve.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.trust import TrustPolicy
from trtserve.server.settings import ServerSettings

log = logging.getLogger(__name__)


def make_tensorrt_backend(settings: ServerSettings, registry: CollectorRegistry) -> TensorRTBackend:
    """The TensorRT backend with the configured lean runtime store and trust policy; its lean
    runtime metrics go on `registry`."""
    trust = TrustPolicy.from_files(
        public_key_files=settings.trusted_keys, allowed_sha256=settings.trusted_plan_sha256
    )
    return TensorRTBackend(
        LeanStore(settings.runtimes_dir),
        trust,
        auto_install=settings.allow_runtime_install,
        probe_plans=settings.probe_plans,
        blocking_wait=settings.gpu_wait == "block",
        registry=registry,
    )


def make_backends(settings: ServerSettings, registry: CollectorRegistry) -> dict[str, Backend]:
    """Every backend this server offers, keyed by platform; their metrics go on `registry`."""
    backends: list[Backend] = [OnnxRuntimeBackend(), make_tensorrt_backend(settings, registry)]
    return {b.platform: b for b in backends}


def preload_runtimes(settings: ServerSettings, backends: dict[str, Backend]) -> None:
    """Give every backend the configured runtime versions to load now (blocking)."""
    if not settings.preload_runtimes:
        return
    for backend in backends.values():
        loaded = backend.preload(settings.preload_runtimes)
        if loaded:
            log.info("preloaded %s runtimes %s", backend.platform, loaded)
