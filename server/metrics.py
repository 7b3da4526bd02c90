"""Prometheus metrics and the per-model statistics that ModelStatistics reports.

One recording call updates both, so `/metrics` and the ModelStatistics RPC never disagree.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from trtserve.server.model_state import ModelState

# Latency buckets in seconds, from 50 us (a tiny model on a warm path) to 30 s.
_LATENCY_BUCKETS = (
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Duration:
    """A count and a total in nanoseconds (the protocol's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """Compute time spent on batches of one size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    """Counters of one model version since it was first loaded."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)


class ServerMetrics:
    """Every metric the server exports, registered once per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ("model", "version")
        self.requests = Counter(
            "trtserve_requests",
            "Inference requests by outcome.",
            (*labels, "outcome"),
            registry=registry,
        )
        self.request_latency = self._histogram(
            registry,
            "trtserve_request_duration_seconds",
            "End-to-end request latency inside the server.",
        )
        self.queue_latency = self._histogram(
            registry, "trtserve_queue_duration_seconds", "Time requests wait in the batch queue."
        )
        self.compute_input_latency = self._histogram(
            registry,
            "trtserve_compute_input_duration_seconds",
            "Time per batch to prepare and copy inputs.",
        )
        self.compute_infer_latency = self._histogram(
            registry, "trtserve_compute_infer_duration_seconds", "Time per batch to execute."
        )
        self.compute_output_latency = self._histogram(
            registry,
            "trtserve_compute_output_duration_seconds",
            "Time per batch to copy and split outputs.",
        )
        self.batch_size = Histogram(
            "trtserve_batch_size",
            "Requests' combined batch size per execution.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.instance_executions = Counter(
            "trtserve_instance_executions",
            "Batches executed by each model instance, by the device it runs on.",
            (*labels, "instance", "device"),
            registry=registry,
        )
        self.pending = Gauge(
            "trtserve_pending_requests",
            "Requests queued or executing.",
            labels,
            registry=registry,
        )
        self.model_state = Gauge(
            "trtserve_model_state",
            "1 for the state each model version is in.",
            (*labels, "state"),
            registry=registry,
        )
        self.tensor_bytes = Counter(
            "trtserve_tensor_bytes",
            "Tensor bytes of inference requests, by direction and by path: inline (in the "
            "messages) or by reference (system_shared_memory, cuda_shared_memory).",
            ("direction", "path"),
            registry=registry,
        )
        self.shared_memory_regions = Gauge(
            "trtserve_shared_memory_regions",
            "Registered shared-memory regions, by kind (system, cuda).",
            ("kind",),
            registry=registry,
        )
        self.shared_memory_bytes = Gauge(
            "trtserve_shared_memory_bytes",
            "Bytes of the registered shared-memory regions, by kind (system, cuda).",
            ("kind",),
            registry=registry,
        )
        # Bound once: recording runs per request.
        self._tensor_bytes = {
            (direction, path): self.tensor_bytes.labels(direction, path)
            for direction in ("input", "output")
            for path in ("inline", "system_shared_memory", "cuda_shared_memory")
        }
        # Every metric labelled by version, but the state (see set_state).
        self._version_metrics: tuple[Counter | Gauge | Histogram, ...] = (
            self.requests,
            self.request_latency,
            self.queue_latency,
            self.compute_input_latency,
            self.compute_infer_latency,
            self.compute_output_latency,
            self.batch_size,
            self.instance_executions,
            self.pending,
        )
        self._stats: dict[tuple[str, str], VersionStats] = {}
        self._bound: dict[tuple[str, str], VersionMetrics] = {}
        self._state_version: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _histogram(registry: CollectorRegistry, name: str, doc: str) -> Histogram:
        return Histogram(
            name, doc, ("model", "version"), buckets=_LATENCY_BUCKETS, registry=registry
        )

    def count_tensor_bytes(self, direction: str, by_path: dict[str, int]) -> None:
        """Add one request's tensor bytes of `direction` ("input", "output") per path."""
        for path, nbytes in by_path.items():
            if nbytes:
                self._tensor_bytes[direction, path].inc(nbytes)

    def set_shared_memory(self, kind: str, regions: int, nbytes: int) -> None:
        """The registered regions of one kind ("system", "cuda") and their bytes."""
        self.shared_memory_regions.labels(kind).set(regions)
        self.shared_memory_bytes.labels(kind).set(nbytes)

    def stats(self, model: str, version: str) -> VersionStats:
        """The statistics of one model version (created empty on first use)."""
        with self._lock:
            return self._stats.setdefault((model, version), VersionStats())

    def snapshot(self) -> dict[tuple[str, str], VersionStats]:
        """All statistics, keyed by (model, version)."""
        with self._lock:
            return dict(self._stats)

    def set_state(self, model: str, version: str, state: ModelState) -> None:
        """Mark the state of a model's current version.

        A model has state series for one version only: the one it serves, is loading, or
        last served. An unloaded model keeps them, UNAVAILABLE at 1, so alerts on a model that
        went away still see it; the series of every other version are removed.
        """
        with self._lock:
            previous = self._state_version.get(model)
            self._state_version[model] = version
        if previous is not None and previous != version:
            for s in ModelState:
                with contextlib.suppress(KeyError):
                    self.model_state.remove(model, previous, s)
        for s in ModelState:
            self.model_state.labels(model, version, s).set(1 if s == state else 0)

    def drop_version(self, model: str, version: str) -> None:
        """Forget a version that stopped serving: its series (but the state's) and statistics.

        Without this every version ever loaded would stay in /metrics and in ModelStatistics.
        """
        with self._lock:
            self._stats.pop((model, version), None)
            bound = self._bound.pop((model, version), None)
        if bound is not None:
            bound.dropped = True
        labels = {"model": model, "version": version}
        for metric in self._version_metrics:
            metric.remove_by_labels(labels)

    def version(self, model: str, version: str) -> VersionMetrics:
        """The metrics of one model version, bound once so recording skips label lookups."""
        key = (model, version)
        bound = self._bound.get(key)
        if bound is None:
            bound = VersionMetrics(self, model, version, self.stats(model, version))
            self._bound[key] = bound
        return bound


class VersionMetrics:
    """The metric children and statistics of one model version, for the hot path."""

    def __init__(
        self, metrics: ServerMetrics, model: str, version: str, stats: VersionStats
    ) -> None:
        self._lock = threading.Lock()
        self._requests = {
            outcome: metrics.requests.labels(model, version, outcome)
            for outcome in ("success", "cancelled")
        }
        self._metrics = metrics
        self._labels = (model, version)
        self._request_latency = metrics.request_latency.labels(model, version)
        self._queue_latency = metrics.queue_latency.labels(model, version)
        self._input_latency = metrics.compute_input_latency.labels(model, version)
        self._infer_latency = metrics.compute_infer_latency.labels(model, version)
        self._output_latency = metrics.compute_output_latency.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        # Read at scrape time from the schedulers serving this version (two while one drains
        # during a reload), so the hot path updates no gauge.
        self._pending_sources: list[Callable[[], int]] = []
        metrics.pending.labels(model, version).set_function(self._pending_total)
        self.stats = stats
        # Set when the version stops serving and its series are removed.
        self.dropped = False

    def add_pending_source(self, source: Callable[[], int]) -> None:
        """Count `source()` (requests queued or executing) in trtserve_pending_requests."""
        with self._lock:
            self._pending_sources.append(source)

    def remove_pending_source(self, source: Callable[[], int]) -> None:
        with self._lock:
            if source in self._pending_sources:
                self._pending_sources.remove(source)

    def _pending_total(self) -> float:
        with self._lock:
            sources = list(self._pending_sources)
        return float(sum(source() for source in sources))

    def instance_executions(self, instance: str, device: str) -> Counter:
        """The execution counter of one instance ("0", "1", ...) on one device ("gpu:1")."""
        counter: Counter = self._metrics.instance_executions.labels(*self._labels, instance, device)
        return counter

    def record_request(
        self, outcome: str, total_ns: int, queue_ns: int | None, batch_size: int = 1
    ) -> None:
        """Record one finished request; queue_ns is None when it never reached the queue.

        `inference_count` counts batch items, as the protocol defines it; `success` counts
        requests.
        """
        counter = self._requests.get(outcome)
        if counter is None:
            if self.dropped:  # a late request of a version gone: labels() would bring it back
                return
            counter = self._metrics.requests.labels(*self._labels, outcome)
            self._requests[outcome] = counter
        counter.inc()
        self._request_latency.observe(total_ns / 1e9)
        stats = self.stats
        with self._lock:
            if outcome == "success":
                stats.success.add(total_ns)
                stats.inference_count += batch_size
                stats.last_inference_ms = time.time_ns() // 1_000_000
            else:
                stats.fail.add(total_ns)
            if queue_ns is not None:
                stats.queue.add(queue_ns)
        if queue_ns is not None:
            self._queue_latency.observe(queue_ns / 1e9)

    def record_execution(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """Record one executed batch made of `requests` requests."""
        self._batch_size.observe(batch_size)
        self._input_latency.observe(input_ns / 1e9)
        self._infer_latency.observe(infer_ns / 1e9)
        self._output_latency.observe(output_ns / 1e9)
        stats = self.stats
        with self._lock:
            stats.execution_count += 1
            # Per-request durations, as Triton reports them: each request carries its batch's.
            stats.compute_input.add(input_ns * requests, requests)
            stats.compute_infer.add(infer_ns * requests, requests)
            stats.compute_output.add(output_ns * requests, requests)
            batch = stats.batches.setdefault(batch_size, BatchStats())
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)
