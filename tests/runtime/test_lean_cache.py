"""The lean runtime cache's locking, reference counting and eviction, and the CUDA helpers.

The real dispatch runtime crashes a process without a GPU, so the TensorRT module here is a
small stand-in with the three calls the cache makes (Runtime, load_runtime, ILogger); the cache
logic is what is under test. The real path runs in tests/gpu.
"""

from __future__ import annotations

import threading
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from trtserve.server.errors import FailedPrecondition, Unavailable
from trtserve.server.runtime import cuda_device
from trtserve.server.runtime.cuda_device import CudaError, check_cuda, cuda_call
from trtserve.server.runtime.lean_cache import LeanCache
from trtserve.server.runtime.plan_header import TrtVersion
from trtserve.server.runtime.trt_logger import RECORDER, LogRecorder


class StandInLogger:
    def __init__(self) -> None:
        pass


class StandInLeanRuntime:
    def __init__(self, path: str) -> None:
        self.path = path


class StandInDispatch:
    """Counts loads; a path containing 'broken' fails as TensorRT does: None and a log line."""

    created = 0

    def __init__(self, logger: Any) -> None:
        type(self).created += 1
        self.logger = logger
        self.loads: list[str] = []
        self.engine_host_code_allowed = False
        self.host_code_seen: list[bool] = []
        self.gate: threading.Event | None = None
        self.load_started = threading.Event()

    def load_runtime(self, path: str) -> StandInLeanRuntime | None:
        self.loads.append(path)
        self.load_started.set()
        if self.gate is not None:
            self.gate.wait()
        if "broken" in path:
            self.logger.log(1, f"cannot dlopen {path}: wrong ELF class")
            return None
        return StandInLeanRuntime(path)

    def deserialize_cuda_engine(self, plan: bytes) -> object:
        self.host_code_seen.append(self.engine_host_code_allowed)
        return object()


def stand_in_module() -> types.ModuleType:
    module = types.ModuleType("standin_tensorrt")
    module.ILogger = StandInLogger  # type: ignore[attr-defined]
    module.Runtime = StandInDispatch  # type: ignore[attr-defined]
    return module


def make_cache(max_unused: int = 2, devices: int = 1) -> LeanCache:
    return LeanCache(stand_in_module(), max_unused=max_unused, device_count=lambda: devices)


def version(n: int) -> TrtVersion:
    # Distinct versions per test keep their lean runtimes apart.
    return TrtVersion(99, n // 100, n % 100, 1)


def lib(v: TrtVersion) -> Path:
    return Path(f"/runtimes/{v}/libnvinfer_lean.so.{v.major}")


def dispatch_of(cache: LeanCache) -> StandInDispatch:
    runtime = cache.dispatch_runtime()
    assert isinstance(runtime, StandInDispatch)
    return runtime


def test_no_cuda_device_never_creates_a_runtime() -> None:
    before = StandInDispatch.created
    cache = make_cache(devices=0)
    with pytest.raises(Unavailable, match="no CUDA device"):
        cache.dispatch_runtime()
    with pytest.raises(Unavailable, match="no CUDA device"):
        cache.acquire(version(1), lib(version(1)))
    assert StandInDispatch.created == before
    assert cache.loaded() == {}


def test_one_dispatch_runtime() -> None:
    cache = make_cache()
    assert cache.dispatch_runtime() is cache.dispatch_runtime()


def test_same_version_is_loaded_once_and_shared() -> None:
    cache = make_cache()
    v = version(2)
    a = cache.acquire(v, lib(v))
    b = cache.acquire(v, lib(v))
    assert a.runtime is b.runtime
    assert dispatch_of(cache).loads == [str(lib(v))]
    assert cache.loaded() == {v: 2}
    a.release()
    a.release()  # a second release changes nothing
    assert cache.loaded() == {v: 1}
    b.release()
    assert cache.loaded() == {v: 0}


def test_concurrent_acquires_load_once() -> None:
    cache = make_cache()
    dispatch = dispatch_of(cache)
    dispatch.gate = threading.Event()
    v = version(3)
    start = threading.Barrier(8)
    runtimes: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            runtimes.append(cache.acquire(v, lib(v)).runtime)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    assert dispatch.load_started.wait(timeout=30)
    dispatch.gate.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(runtimes) == 8
    assert all(r is runtimes[0] for r in runtimes)
    assert dispatch.loads == [str(lib(v))]
    assert cache.loaded() == {v: 8}


def test_unused_runtimes_beyond_the_limit_are_dropped_oldest_first() -> None:
    cache = make_cache(max_unused=1)
    v1, v2, v3 = version(4), version(5), version(6)
    leases = [cache.acquire(v, lib(v)) for v in (v1, v2, v3)]
    assert set(cache.loaded()) == {v1, v2, v3}
    for lease in leases:
        lease.release()
    assert cache.loaded() == {v3: 0}
    # A dropped version loads again on the next use.
    cache.acquire(v1, lib(v1)).release()
    assert dispatch_of(cache).loads.count(str(lib(v1))) == 2
    assert set(cache.loaded()) == {v1}


def test_a_runtime_in_use_is_never_dropped() -> None:
    cache = make_cache(max_unused=0)
    held_version, other = version(7), version(8)
    held = cache.acquire(held_version, lib(held_version))
    cache.acquire(other, lib(other)).release()
    assert cache.loaded() == {held_version: 1}
    held.release()
    assert cache.loaded() == {}


def test_failed_load_quotes_tensorrt_and_is_retried() -> None:
    cache = make_cache()
    v = version(9)
    broken = Path("/runtimes/broken/libnvinfer_lean.so.99")
    with pytest.raises(FailedPrecondition, match=r"99\.0\.9\.1.*wrong ELF class"):
        cache.acquire(v, broken)
    assert cache.loaded() == {}
    lease = cache.acquire(v, lib(v))
    assert cache.loaded() == {v: 1}
    lease.release()


def test_metrics() -> None:
    cache = make_cache(max_unused=0)
    registry = CollectorRegistry()
    registry.register(cache.metrics)
    v = version(10)
    count_before = registry.get_sample_value("trtserve_lean_runtime_load_seconds_count") or 0
    lease = cache.acquire(v, lib(v))
    assert registry.get_sample_value("trtserve_lean_runtimes_loaded", {"version": str(v)}) == 1
    assert registry.get_sample_value("trtserve_lean_runtime_references", {"version": str(v)}) == 1
    assert registry.get_sample_value("trtserve_lean_runtime_load_seconds_count") == count_before + 1
    lease.release()
    assert registry.get_sample_value("trtserve_lean_runtimes_loaded", {"version": str(v)}) is None
    # Dropped as unused (max_unused=0), so the next use loads it again, and the count shows it.
    cache.acquire(v, lib(v)).release()
    assert registry.get_sample_value("trtserve_lean_runtime_loads_total", {"version": str(v)}) == 2


def test_host_code_is_allowed_only_during_the_trusted_deserialization() -> None:
    cache = make_cache()
    dispatch = dispatch_of(cache)
    assert cache.deserialize_with_host_code(b"plan") is not None
    assert dispatch.host_code_seen == [True]
    assert dispatch.engine_host_code_allowed is False


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_unused"):
        LeanCache(stand_in_module(), max_unused=-1)


def test_recorder_prefers_the_calling_threads_errors() -> None:
    recorder = LogRecorder()
    mark = recorder.mark()
    other = threading.Thread(target=recorder.record, args=(1, "other thread's error"))
    other.start()
    other.join()
    assert recorder.errors_since(mark) == ["other thread's error"]
    recorder.record(1, "my error")
    recorder.record(3, "info is not kept")
    assert recorder.errors_since(mark) == ["my error"]
    assert recorder.errors_since(recorder.mark()) == []


def test_logger_survives_bad_severity() -> None:
    from trtserve.server.runtime.trt_logger import trt_logger

    logger = trt_logger(stand_in_module())
    mark = RECORDER.mark()
    logger.log("not a severity", "still recorded")
    assert RECORDER.errors_since(mark) == ["still recorded"]
    assert trt_logger(stand_in_module()) is logger


def test_check_cuda_passes_success_and_names_failures() -> None:
    check_cuda(0, "cudaMalloc")
    with pytest.raises(CudaError, match=r"CUDA cudaMalloc failed: .*\(2\)") as caught:
        check_cuda(2, "cudaMalloc")
    assert caught.value.status


def test_cuda_call_unpacks_results() -> None:
    assert cuda_call("one", lambda: (0, 7)) == 7
    assert cuda_call("none", lambda: (0,)) is None
    assert cuda_call("two", lambda: (0, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match="CUDA cudaMemcpyAsync failed"):
        cuda_call("cudaMemcpyAsync", lambda: (1,))


def test_without_cuda_bindings_there_are_no_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_device, "cudart", lambda: None)
    assert cuda_device.cuda_device_count() == 0
    with pytest.raises(
        FailedPrecondition, match="CUDA device 1 does not exist: this process sees 0"
    ):
        cuda_device.require_device(1)


def test_metrics_reach_every_registry_they_are_registered_on() -> None:
    """Each server registers the process's cache on its own registry; all see the same loads."""
    cache = make_cache()
    registries = (CollectorRegistry(), CollectorRegistry())
    for registry in registries:
        registry.register(cache.metrics)
    v = version(11)
    with cache.acquire(v, lib(v)):
        for registry in registries:
            labels = {"version": str(v)}
            assert registry.get_sample_value("trtserve_lean_runtimes_loaded", labels) == 1
