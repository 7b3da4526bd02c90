"""One TensorRT dispatch runtime per process, and the lean runtimes it loaded, by version.

The dispatch runtime (`tensorrt_dispatch.Runtime`) is created on first need and only when a
CUDA device is visible: without one TensorRT hands back a runtime that crashes the process
when used. Lean runtimes are loaded with `load_runtime(path)`, once per exact version even when
several models load at once, kept while an engine holds a lease on them and dropped, least
recently used first, when more than `max_unused` are idle.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtserve.server.errors import FailedPrecondition, Unavailable
from trtserve.server.runtime.cuda_device import cuda_device_count
from trtserve.server.runtime.lean_metrics import LeanRuntimeMetrics
from trtserve.server.runtime.plan_header import TrtVersion
from trtserve.server.runtime.trt_logger import RECORDER, trt_logger

DISPATCH_MODULE = "tensorrt_dispatch"


def import_dispatch() -> Any:
    """The `tensorrt_dispatch` module; Unavailable names the package when it is missing."""
    try:
        return importlib.import_module(DISPATCH_MODULE)
    except ImportError as e:
        raise Unavailable(
            f"TensorRT: the {DISPATCH_MODULE} module is not installed "
            f"(pip install 'trtserve[tensorrt]'): {e}"
        ) from None


@dataclass
class _Entry:
    """One lean runtime version: loaded once under `load_lock`, shared by its leases."""

    version: TrtVersion
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    runtime: Any = None
    references: int = 0
    # Order of the last release; the smallest idle one is dropped first.
    idle_since: int = 0


class LeanRuntimeLease:
    """An engine's hold on a loaded lean runtime; release it after destroying the engine."""

    def __init__(self, cache: LeanCache, entry: _Entry) -> None:
        self._cache = cache
        self._entry: _Entry | None = entry
        self.version = entry.version
        self.runtime: Any = entry.runtime

    def release(self) -> None:
        """Give the runtime back; calling it again does nothing."""
        entry, self._entry = self._entry, None
        self.runtime = None
        if entry is not None:
            self._cache._release(entry)

    def __enter__(self) -> LeanRuntimeLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeanCache:
    """The process's dispatch runtime and its cache of lean runtimes keyed by exact version."""

    def __init__(
        self,
        trt: Any | None = None,
        *,
        max_unused: int = 2,
        device_count: Callable[[], int] = cuda_device_count,
    ) -> None:
        """`trt` is the TensorRT module (default: import tensorrt_dispatch on first need).

        Its `metrics` reach a server's /metrics once registered there (TensorRTBackend does).
        """
        if max_unused < 0:
            raise ValueError(f"max_unused: expected >= 0, received {max_unused}")
        self._trt = trt
        self._device_count = device_count
        self.max_unused = max_unused
        self.metrics = LeanRuntimeMetrics()
        self._lock = threading.Lock()
        self._dispatch_lock = threading.Lock()
        self._dispatch: Any = None
        self._entries: dict[TrtVersion, _Entry] = {}
        self._release_serial = 0

    def module(self) -> Any:
        if self._trt is None:
            self._trt = import_dispatch()
        return self._trt

    def dispatch_runtime(self) -> Any:
        """The one dispatch runtime, created on first call; Unavailable without a GPU."""
        with self._dispatch_lock:
            if self._dispatch is None:
                count = self._device_count()
                if count <= 0:
                    raise Unavailable(
                        "TensorRT: no CUDA device is visible, so no TensorRT runtime is created"
                    )
                trt = self.module()
                runtime = trt.Runtime(trt_logger(trt))
                if runtime is None:
                    raise Unavailable("TensorRT: the dispatch runtime could not be created")
                self._dispatch = runtime
            return self._dispatch

    def deserialize_with_host_code(self, plan: bytes, runtime: Any = None) -> Any:
        """Deserialize a plan that carries host code, allowing it for this call only.

        `runtime` is the lean runtime for a plan with a plugin library; the default, the
        dispatch runtime, is for a plan that embeds its lean runtime. The caller has checked
        that the plan is trusted. Returns None on failure, as TensorRT.
        """
        if runtime is None:
            runtime = self.dispatch_runtime()
        # One lock for every runtime: host code is allowed for exactly one call at a time.
        with self._dispatch_lock:
            runtime.engine_host_code_allowed = True
            try:
                return runtime.deserialize_cuda_engine(plan)
            finally:
                runtime.engine_host_code_allowed = False

    def acquire(self, version: TrtVersion, library: Path) -> LeanRuntimeLease:
        """A lease on the lean runtime of `version`, loading `library` if not loaded yet."""
        entry = self._pin(version)
        try:
            with entry.load_lock:
                if entry.runtime is None:
                    entry.runtime = self._load(version, library)
        except BaseException:
            self._release(entry)
            raise
        return LeanRuntimeLease(self, entry)

    def loaded(self) -> dict[TrtVersion, int]:
        """Loaded versions and how many leases each has."""
        with self._lock:
            return {v: e.references for v, e in self._entries.items() if e.runtime is not None}

    def _pin(self, version: TrtVersion) -> _Entry:
        with self._lock:
            entry = self._entries.get(version)
            if entry is None:
                entry = self._entries[version] = _Entry(version)
            entry.references += 1
            self.metrics.references.labels(str(version)).set(entry.references)
            return entry

    def _load(self, version: TrtVersion, library: Path) -> Any:
        dispatch = self.dispatch_runtime()
        mark = RECORDER.mark()
        # Loads of different versions run one at a time: TensorRT does not document
        # load_runtime as thread-safe, and each takes about 10 ms.
        with self._dispatch_lock:
            started = time.perf_counter()
            runtime = dispatch.load_runtime(str(library))
            elapsed = time.perf_counter() - started
        if runtime is None:
            said = "; ".join(RECORDER.errors_since(mark)) or "no message from TensorRT"
            raise FailedPrecondition(
                f"lean runtime {version}: TensorRT could not load {library}: {said}"
            )
        self.metrics.load_seconds.observe(elapsed)
        self.metrics.loads.labels(str(version)).inc()
        self.metrics.loaded.labels(str(version)).set(1)
        return runtime

    def _release(self, entry: _Entry) -> None:
        dropped: list[Any] = []
        with self._lock:
            entry.references -= 1
            self.metrics.references.labels(str(entry.version)).set(entry.references)
            if entry.references == 0:
                self._release_serial += 1
                entry.idle_since = self._release_serial
                if entry.runtime is None:
                    # Its load failed and nobody waits on it: forget it.
                    self._forget(entry)
            dropped = self._evict()
        # Lean runtimes are destroyed outside the lock: that may take a while.
        del dropped

    def _evict(self) -> list[Any]:
        idle = sorted(
            (e for e in self._entries.values() if e.references == 0 and e.runtime is not None),
            key=lambda e: e.idle_since,
        )
        dropped = []
        for entry in idle[: max(0, len(idle) - self.max_unused)]:
            dropped.append(entry.runtime)
            entry.runtime = None
            self._forget(entry)
        return dropped

    def _forget(self, entry: _Entry) -> None:
        if self._entries.get(entry.version) is entry:
            del self._entries[entry.version]
        self.metrics.forget(str(entry.version))


# The name the server's wiring uses for the process-wide instance's class.
RuntimeManager = LeanCache


_process_cache: LeanCache | None = None
_process_cache_lock = threading.Lock()


def process_lean_cache(max_unused: int = 2) -> LeanCache:
    """The process-wide cache (and so the one dispatch runtime); `max_unused` applies once."""
    global _process_cache
    with _process_cache_lock:
        if _process_cache is None:
            _process_cache = LeanCache(max_unused=max_unused)
        return _process_cache
