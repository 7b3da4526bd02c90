"""Prometheus metrics, the only store of the statistics that ModelStatistics reports.

ModelStatistics is read back from the metric families (`version_statistics`), so it and
`/metrics` never disagree. With several worker processes (prometheus-client's multiprocess
mode, PROMETHEUS_MULTIPROC_DIR) the families come from every worker's files, summed, those of
workers that died included, so the counts never go backwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric

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
PHASES = ("input", "infer", "output")

# Whether values live in per-process files (chosen by prometheus-client at import). There a
# removed series keeps its file value, and remove() only warns.
MULTIPROCESS = bool(values.ValueClass._multiprocess)

# The families ModelStatistics is read from, by the names of their samples.
_REQUESTS = "trtserve_requests"
_REQUEST_SECONDS = "trtserve_request_seconds"
_QUEUE = "trtserve_queue_duration_seconds"
_COMPUTE_REQUESTS = "trtserve_compute_requests"
_COMPUTE_SECONDS = "trtserve_request_compute_seconds"
_INFERENCE_COUNT = "trtserve_inference_count"
_BATCH_SIZE = "trtserve_batch_size"
_BATCH_EXECUTIONS = "trtserve_batch_executions"
_BATCH_COMPUTE_SECONDS = "trtserve_batch_compute_seconds"
_LAST_INFERENCE = "trtserve_last_inference_timestamp_seconds"

_STATISTICS_SAMPLES = frozenset(
    (
        f"{_REQUESTS}_total",
        f"{_REQUEST_SECONDS}_total",
        f"{_QUEUE}_count",
        f"{_QUEUE}_sum",
        f"{_COMPUTE_REQUESTS}_total",
        f"{_COMPUTE_SECONDS}_total",
        f"{_INFERENCE_COUNT}_total",
        f"{_BATCH_SIZE}_count",
        f"{_BATCH_EXECUTIONS}_total",
        f"{_BATCH_COMPUTE_SECONDS}_total",
        _LAST_INFERENCE,
    )
)

StatisticsSource = Callable[[], Iterable[Metric]]


@dataclass
class Duration:
    """A count and a total in nanoseconds (the protocol's StatisticDuration)."""

    count: int = 0
    ns: int = 0


@dataclass
class BatchStats:
    """Compute time spent on batches of one size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def phase(self, phase: str) -> Duration:
        """The compute duration of `phase` ("input", "infer", "output")."""
        return _phase(self, phase)


@dataclass
class VersionStats:
    """Counters of one model version, as its metric families hold them."""

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

    def phase(self, phase: str) -> Duration:
        """The compute duration of `phase` ("input", "infer", "output")."""
        return _phase(self, phase)


def _phase(stats: VersionStats | BatchStats, phase: str) -> Duration:
    if phase == "input":
        return stats.compute_input
    if phase == "infer":
        return stats.compute_infer
    if phase == "output":
        return stats.compute_output
    raise ValueError(f"unknown compute phase {phase!r}")


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def version_statistics(families: Iterable[Metric]) -> dict[tuple[str, str], VersionStats]:
    """The statistics of every (model, version) found in `families` (from a collect()).

    Families and samples that are not statistics are skipped, so a whole registry, or a
    MultiProcessCollector's sum over processes, may be passed.
    """
    stats: dict[tuple[str, str], VersionStats] = {}
    for family in families:
        for sample in family.samples:
            name, value, labels = sample.name, sample.value, sample.labels
            if name not in _STATISTICS_SAMPLES:
                continue
            key = (labels["model"], labels["version"])
            s = stats.get(key)
            if s is None:
                s = stats[key] = VersionStats()
            if name == f"{_REQUESTS}_total":
                # Every outcome but success is a failure, as the protocol counts them.
                if labels.get("outcome") == "success":
                    s.success.count += round(value)
                else:
                    s.fail.count += round(value)
            elif name == f"{_REQUEST_SECONDS}_total":
                (s.success if labels.get("result") == "success" else s.fail).ns += _ns(value)
            elif name == f"{_QUEUE}_count":
                s.queue.count += round(value)
            elif name == f"{_QUEUE}_sum":
                s.queue.ns += _ns(value)
            elif name == f"{_COMPUTE_REQUESTS}_total":
                for phase in PHASES:
                    s.phase(phase).count += round(value)
            elif name == f"{_COMPUTE_SECONDS}_total":
                s.phase(labels["phase"]).ns += _ns(value)
            elif name == f"{_INFERENCE_COUNT}_total":
                s.inference_count += round(value)
            elif name == f"{_BATCH_SIZE}_count":
                s.execution_count += round(value)
            elif name == f"{_BATCH_EXECUTIONS}_total":
                batch = s.batches.setdefault(int(labels["batch_size"]), BatchStats())
                for phase in PHASES:
                    batch.phase(phase).count += round(value)
            elif name == f"{_BATCH_COMPUTE_SECONDS}_total":
                batch = s.batches.setdefault(int(labels["batch_size"]), BatchStats())
                batch.phase(labels["phase"]).ns += _ns(value)
            elif name == _LAST_INFERENCE:
                s.last_inference_ms = max(s.last_inference_ms, round(value * 1000))
    return stats


class ServerMetrics:
    """Every metric the server exports, registered once per registry."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        statistics_source: StatisticsSource | None = None,
    ) -> None:
        """`statistics_source`: where `statistics()` reads the families from; default, this
        object's own (one process). With worker processes: a MultiProcessCollector's collect."""
        labels = ("model", "version")
        self.requests = Counter(
            _REQUESTS, "Inference requests by outcome.", (*labels, "outcome"), registry=registry
        )
        self.request_seconds = Counter(
            _REQUEST_SECONDS,
            "Seconds inference requests spent inside the server, by result (success, fail).",
            (*labels, "result"),
            registry=registry,
        )
        self.inference_count = Counter(
            _INFERENCE_COUNT,
            "Batch items (rows) of successful inference requests.",
            labels,
            registry=registry,
        )
        self.last_inference = Gauge(
            _LAST_INFERENCE,
            "When the last successful inference request ended (Unix time, ms resolution).",
            labels,
            registry=registry,
            multiprocess_mode="max",
        )
        self.request_latency = self._histogram(
            registry,
            "trtserve_request_duration_seconds",
            "End-to-end request latency inside the server.",
        )
        self.queue_latency = self._histogram(
            registry, _QUEUE, "Time requests wait in the batch queue."
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
        self.compute_requests = Counter(
            _COMPUTE_REQUESTS,
            "Requests executed in a batch (the count of trtserve_request_compute_seconds).",
            labels,
            registry=registry,
        )
        self.request_compute_seconds = Counter(
            _COMPUTE_SECONDS,
            "Compute seconds per request, by phase (input, infer, output): each request "
            "counts its whole batch's time, as Triton's statistics do.",
            (*labels, "phase"),
            registry=registry,
        )
        self.batch_size = Histogram(
            _BATCH_SIZE,
            "Requests' combined batch size per execution.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_executions = Counter(
            _BATCH_EXECUTIONS,
            "Executions by their exact batch size.",
            (*labels, "batch_size"),
            registry=registry,
        )
        self.batch_compute_seconds = Counter(
            _BATCH_COMPUTE_SECONDS,
            "Compute seconds of executions by their exact batch size and by phase.",
            (*labels, "batch_size", "phase"),
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
            multiprocess_mode="livesum",
        )
        self.model_state = Gauge(
            "trtserve_model_state",
            "1 for the state each model version is in.",
            (*labels, "state"),
            registry=registry,
            multiprocess_mode="livemax",
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
            multiprocess_mode="livemax",
        )
        self.shared_memory_bytes = Gauge(
            "trtserve_shared_memory_bytes",
            "Bytes of the registered shared-memory regions, by kind (system, cuda).",
            ("kind",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Bound once: recording runs per request.
        self._tensor_bytes = {
            (direction, path): self.tensor_bytes.labels(direction, path)
            for direction in ("input", "output")
            for path in ("inline", "system_shared_memory", "cuda_shared_memory")
        }
        self._statistics_families: tuple[Counter | Gauge | Histogram, ...] = (
            self.requests,
            self.request_seconds,
            self.inference_count,
            self.last_inference,
            self.queue_latency,
            self.compute_requests,
            self.request_compute_seconds,
            self.batch_size,
            self.batch_executions,
            self.batch_compute_seconds,
        )
        # Every metric labelled by version, but the state (see set_state).
        self._version_metrics: tuple[Counter | Gauge | Histogram, ...] = (
            *self._statistics_families,
            self.request_latency,
            self.compute_input_latency,
            self.compute_infer_latency,
            self.compute_output_latency,
            self.instance_executions,
            self.pending,
        )
        self._statistics_source = statistics_source or self._own_statistics_families
        self._bound: dict[tuple[str, str], VersionMetrics] = {}
        self._state_versions: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _histogram(registry: CollectorRegistry, name: str, doc: str) -> Histogram:
        return Histogram(
            name, doc, ("model", "version"), buckets=_LATENCY_BUCKETS, registry=registry
        )

    def _own_statistics_families(self) -> Iterator[Metric]:
        for family in self._statistics_families:
            yield from family.collect()

    def statistics(self) -> dict[tuple[str, str], VersionStats]:
        """Every version's statistics in the source, by (model, version).

        The source may still hold versions that stopped serving (multiprocess mode's files
        keep them): callers keep the versions they serve.
        """
        return version_statistics(self._statistics_source())

    def count_tensor_bytes(self, direction: str, by_path: dict[str, int]) -> None:
        """Add one request's tensor bytes of `direction` ("input", "output") per path."""
        for path, nbytes in by_path.items():
            if nbytes:
                self._tensor_bytes[direction, path].inc(nbytes)

    def set_shared_memory(self, kind: str, regions: int, nbytes: int) -> None:
        """The registered regions of one kind ("system", "cuda") and their bytes."""
        self.shared_memory_regions.labels(kind).set(regions)
        self.shared_memory_bytes.labels(kind).set(nbytes)

    def set_state(self, model: str, versions: Sequence[str], state: ModelState) -> None:
        """Mark the state of a model's current versions.

        A model has state series for its current versions only: those it serves, is loading,
        or last served. An unloaded model keeps them, UNAVAILABLE at 1, so alerts on a model
        that went away still see it; the series of every other version are removed (in
        multiprocess mode, set to 0).
        """
        with self._lock:
            previous = self._state_versions.get(model, ())
            self._state_versions[model] = tuple(versions)
        for gone in set(previous) - set(versions):
            for s in ModelState:
                # Zeroed first: in multiprocess mode the file keeps a removed series' value.
                self.model_state.labels(model, gone, s).set(0)
                if not MULTIPROCESS:
                    self.model_state.remove(model, gone, s)
        for version in versions:
            for s in ModelState:
                self.model_state.labels(model, version, s).set(1 if s == state else 0)

    def drop_version(self, model: str, version: str) -> None:
        """Forget a version that stopped serving: its series, but the state's.

        Without this every version ever loaded would stay in /metrics and in ModelStatistics.
        In multiprocess mode the files keep every series (and counters summed over processes
        must not go backwards anyway): only the pending gauge is zeroed there.
        """
        with self._lock:
            bound = self._bound.pop((model, version), None)
        if bound is not None:
            bound.retire()
        if not MULTIPROCESS:
            labels = {"model": model, "version": version}
            for metric in self._version_metrics:
                metric.remove_by_labels(labels)

    def version(self, model: str, version: str) -> VersionMetrics:
        """The metrics of one model version, bound once so recording skips label lookups."""
        key = (model, version)
        with self._lock:
            bound = self._bound.get(key)
            if bound is None:
                bound = self._bound[key] = VersionMetrics(self, model, version)
        return bound

    def publish_pending(self) -> None:
        """Set each version's pending gauge from its schedulers.

        Multiprocess mode exports no gauge function (see VersionMetrics), so the server calls
        this periodically there; in one process it changes nothing that is exported.
        """
        with self._lock:
            bound = list(self._bound.values())
        for version in bound:
            version.publish_pending()


class VersionMetrics:
    """The metric children of one model version, for the hot path."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._lock = threading.Lock()
        self._metrics = metrics
        self._labels = (model, version)
        self._requests = {
            outcome: metrics.requests.labels(model, version, outcome)
            for outcome in ("success", "cancelled")
        }
        self._success_seconds = metrics.request_seconds.labels(model, version, "success")
        self._fail_seconds = metrics.request_seconds.labels(model, version, "fail")
        self._inference_count = metrics.inference_count.labels(model, version)
        self._last_inference = metrics.last_inference.labels(model, version)
        self._request_latency = metrics.request_latency.labels(model, version)
        self._queue_latency = metrics.queue_latency.labels(model, version)
        self._input_latency = metrics.compute_input_latency.labels(model, version)
        self._infer_latency = metrics.compute_infer_latency.labels(model, version)
        self._output_latency = metrics.compute_output_latency.labels(model, version)
        self._compute_requests = metrics.compute_requests.labels(model, version)
        self._compute_input, self._compute_infer, self._compute_output = (
            metrics.request_compute_seconds.labels(model, version, phase) for phase in PHASES
        )
        self._batch_size = metrics.batch_size.labels(model, version)
        # Per exact batch size: (executions, input, infer, output seconds), bound on first use.
        self._batches: dict[int, tuple[Counter, Counter, Counter, Counter]] = {}
        # Read at scrape time from the schedulers serving this version (two while one drains
        # during a reload), so the hot path updates no gauge. In multiprocess mode scrapes
        # read the files only: publish_pending() writes the value there.
        self._pending_sources: list[Callable[[], int]] = []
        self._pending = metrics.pending.labels(model, version)
        self._pending.set_function(self._pending_total)
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

    def publish_pending(self) -> None:
        """Write the pending requests into the gauge's value (multiprocess mode's files)."""
        total = self._pending_total()
        with self._lock:
            if not self.dropped:  # else retire() zeroed it for good
                self._pending.set(total)

    def retire(self) -> None:
        """Stop publishing: the version stopped serving."""
        with self._lock:
            self.dropped = True
            self._pending.set(0)

    def instance_executions(self, instance: str, device: str) -> Counter:
        """The execution counter of one instance ("0", "1", ...) on one device ("gpu:1")."""
        counter: Counter = self._metrics.instance_executions.labels(*self._labels, instance, device)
        return counter

    def record_request(
        self, outcome: str, total_ns: int, queue_ns: int | None, batch_size: int = 1
    ) -> None:
        """Record one finished request; queue_ns is None when it never reached the queue.

        `batch_size` counts in trtserve_inference_count (batch items, as the protocol
        defines it) when the request succeeded; every other outcome is a failure.
        """
        counter = self._requests.get(outcome)
        if counter is None:
            if self.dropped:  # a late request of a version gone: labels() would bring it back
                return
            counter = self._metrics.requests.labels(*self._labels, outcome)
            self._requests[outcome] = counter
        counter.inc()
        seconds = total_ns / 1e9
        self._request_latency.observe(seconds)
        if outcome == "success":
            self._success_seconds.inc(seconds)
            self._inference_count.inc(batch_size)
            # Whole milliseconds, the protocol's unit, so reading back gives them exactly.
            self._last_inference.set(time.time_ns() // 1_000_000 / 1e3)
        else:
            self._fail_seconds.inc(seconds)
        if queue_ns is not None:
            self._queue_latency.observe(queue_ns / 1e9)

    def record_execution(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """Record one executed batch made of `requests` requests."""
        batch = self._batches.get(batch_size)
        if batch is None:
            if self.dropped:  # a late batch of a version gone: labels() would bring it back
                return
            batch = self._bind_batch(batch_size)
        executions, batch_input, batch_infer, batch_output = batch
        self._batch_size.observe(batch_size)
        self._input_latency.observe(input_ns / 1e9)
        self._infer_latency.observe(infer_ns / 1e9)
        self._output_latency.observe(output_ns / 1e9)
        # Per-request durations, as Triton reports them: each request carries its batch's.
        self._compute_requests.inc(requests)
        self._compute_input.inc(input_ns * requests / 1e9)
        self._compute_infer.inc(infer_ns * requests / 1e9)
        self._compute_output.inc(output_ns * requests / 1e9)
        executions.inc()
        batch_input.inc(input_ns / 1e9)
        batch_infer.inc(infer_ns / 1e9)
        batch_output.inc(output_ns / 1e9)

    def _bind_batch(self, batch_size: int) -> tuple[Counter, Counter, Counter, Counter]:
        metrics, (model, version), size = self._metrics, self._labels, str(batch_size)
        seconds = metrics.batch_compute_seconds
        batch = (
            metrics.batch_executions.labels(model, version, size),
            seconds.labels(model, version, size, "input"),
            seconds.labels(model, version, size, "infer"),
            seconds.labels(model, version, size, "output"),
        )
        self._batches[batch_size] = batch
        return batch
