"""Prometheus metrics, the only store of the statistics that ModelStatistics reports.

What requests record is kept as plain numbers (request_counts) and exported by one collector
with the same names prometheus-client would use; ModelStatistics is read back from those
families (`version_statistics`), so it and /metrics never disagree. Gauges set now and then
(pending requests, model states, shared memory) are prometheus-client's own. With several worker
processes each worker writes its counts to a file of its own (counts_files) and gauges to
prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR); readers sum every worker's,
those of workers that died included, so the counts never go backwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from trtserve.server.counts_files import CountsFile, encode, read_counts
from trtserve.server.model_state import ModelState
from trtserve.server.request_counts import (
    BATCH_COMPUTE_SECONDS,
    BATCH_EXECUTIONS,
    BATCH_SIZE,
    COMPUTE_REQUESTS,
    COMPUTE_SECONDS,
    INFERENCE_COUNT,
    INSTANCE_EXECUTIONS,
    LAST_INFERENCE,
    PHASE_DURATION,
    PHASES,
    QUEUE,
    REQUEST_DURATION,
    REQUEST_SECONDS,
    REQUESTS,
    TENSOR_BYTES,
    TensorBytes,
    VersionCounts,
)

log = logging.getLogger(__name__)

# Whether gauges live in per-process files (chosen by prometheus-client at import). There a
# removed series keeps its file value, and remove() only warns.
MULTIPROCESS = bool(values.ValueClass._multiprocess)

# The families of request_counts: name, type, help.
_COUNT_FAMILIES = (
    (REQUESTS, "counter", "Inference requests by outcome."),
    (
        REQUEST_SECONDS,
        "counter",
        "Seconds inference requests spent inside the server, by result (success, fail).",
    ),
    (INFERENCE_COUNT, "counter", "Batch items (rows) of successful inference requests."),
    (
        LAST_INFERENCE,
        "gauge",
        "When the last successful inference request ended (Unix time, ms resolution).",
    ),
    (REQUEST_DURATION, "histogram", "End-to-end request latency inside the server."),
    (QUEUE, "histogram", "Time requests wait in the batch queue."),
    (PHASE_DURATION["input"], "histogram", "Time per batch to prepare and copy inputs."),
    (PHASE_DURATION["infer"], "histogram", "Time per batch to execute."),
    (PHASE_DURATION["output"], "histogram", "Time per batch to copy and split outputs."),
    (
        COMPUTE_REQUESTS,
        "counter",
        "Requests executed in a batch (the count of trtserve_request_compute_seconds).",
    ),
    (
        COMPUTE_SECONDS,
        "counter",
        "Compute seconds per request, by phase (input, infer, output): each request "
        "counts its whole batch's time, as Triton's statistics do.",
    ),
    (BATCH_SIZE, "histogram", "Requests' combined batch size per execution."),
    (BATCH_EXECUTIONS, "counter", "Executions by their exact batch size."),
    (
        BATCH_COMPUTE_SECONDS,
        "counter",
        "Compute seconds of executions by their exact batch size and by phase.",
    ),
    (
        INSTANCE_EXECUTIONS,
        "counter",
        "Batches executed by each model instance, by the device it runs on.",
    ),
    (
        TENSOR_BYTES,
        "counter",
        "Tensor bytes of inference requests, by direction and by path: inline (in the "
        "messages) or by reference (system_shared_memory, cuda_shared_memory).",
    ),
)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
# Each sample name's family.
_FAMILY_OF = {
    name + suffix: name for name, kind, _ in _COUNT_FAMILIES for suffix in _SUFFIXES[kind]
}

# The samples ModelStatistics is read from.
_STATISTICS_SAMPLES = frozenset(
    (
        f"{REQUESTS}_total",
        f"{REQUEST_SECONDS}_total",
        f"{QUEUE}_count",
        f"{QUEUE}_sum",
        f"{COMPUTE_REQUESTS}_total",
        f"{COMPUTE_SECONDS}_total",
        f"{INFERENCE_COUNT}_total",
        f"{BATCH_SIZE}_count",
        f"{BATCH_EXECUTIONS}_total",
        f"{BATCH_COMPUTE_SECONDS}_total",
        LAST_INFERENCE,
    )
)


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
            if name == f"{REQUESTS}_total":
                # Every outcome but success is a failure, as the protocol counts them.
                if labels.get("outcome") == "success":
                    s.success.count += round(value)
                else:
                    s.fail.count += round(value)
            elif name == f"{REQUEST_SECONDS}_total":
                (s.success if labels.get("result") == "success" else s.fail).ns += _ns(value)
            elif name == f"{QUEUE}_count":
                s.queue.count += round(value)
            elif name == f"{QUEUE}_sum":
                s.queue.ns += _ns(value)
            elif name == f"{COMPUTE_REQUESTS}_total":
                for phase in PHASES:
                    s.phase(phase).count += round(value)
            elif name == f"{COMPUTE_SECONDS}_total":
                s.phase(labels["phase"]).ns += _ns(value)
            elif name == f"{INFERENCE_COUNT}_total":
                s.inference_count += round(value)
            elif name == f"{BATCH_SIZE}_count":
                s.execution_count += round(value)
            elif name == f"{BATCH_EXECUTIONS}_total":
                batch = s.batches.setdefault(int(labels["batch_size"]), BatchStats())
                for phase in PHASES:
                    batch.phase(phase).count += round(value)
            elif name == f"{BATCH_COMPUTE_SECONDS}_total":
                batch = s.batches.setdefault(int(labels["batch_size"]), BatchStats())
                batch.phase(labels["phase"]).ns += _ns(value)
            elif name == LAST_INFERENCE:
                s.last_inference_ms = max(s.last_inference_ms, round(value * 1000))
    return stats


class CountsCollector(Collector):
    """The request counts' metric families, from `source`'s samples (one process's or many)."""

    def __init__(self, source: Callable[[], Iterable[Sample]]) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return [Metric(name, doc, kind) for name, kind, doc in _COUNT_FAMILIES]

    def collect(self) -> list[Metric]:
        families = {name: Metric(name, doc, kind) for name, kind, doc in _COUNT_FAMILIES}
        for sample in self._source():
            family = _FAMILY_OF.get(sample.name)
            if family is not None:  # a name a newer or older trtserve wrote: not ours to show
                families[family].samples.append(sample)
        return list(families.values())


class ServerMetrics:
    """Every metric the server exports, registered once per registry."""

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, counts_folder: Path | None = None
    ) -> None:
        """`counts_folder`: where worker processes keep their request counts (each its own
        file, see counts_files); the families and ModelStatistics then sum every file there.
        None: one process, read from memory."""
        labels = ("model", "version")
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
        self._tensor_bytes = TensorBytes()
        # Every version's counts, by (model, version); a version dropped in one process
        # leaves, one dropped by a worker stays (its file's sums must not go backwards).
        self._counts: dict[tuple[str, str], VersionCounts] = {}
        self._file = None if counts_folder is None else CountsFile(counts_folder)
        self._written: tuple[int, ...] = ()
        self._write_lock = threading.Lock()
        # Each version's encoded part of the counts file, with the generation it is of.
        self._parts: dict[VersionCounts, tuple[int, str]] = {}
        self._write_failing = False
        self._collector = CountsCollector(
            self._own_samples if counts_folder is None else lambda: read_counts(counts_folder)
        )
        registry.register(self._collector)
        self._bound: dict[tuple[str, str], VersionMetrics] = {}
        self._state_versions: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def _own_samples(self) -> Iterator[Sample]:
        with self._lock:
            counts = list(self._counts.values())
        for version in counts:
            yield from version.samples()
        yield from self._tensor_bytes.samples()

    def statistics(self) -> dict[tuple[str, str], VersionStats]:
        """Every version's statistics, by (model, version).

        Worker files may still hold versions that stopped serving: callers keep the versions
        they serve.
        """
        self.publish_counts()
        return version_statistics(self._collector.collect())

    def count_tensor_bytes(self, direction: str, by_path: dict[str, int]) -> None:
        """Add one request's tensor bytes of `direction` ("input", "output") per path."""
        self._tensor_bytes.add(direction, by_path)

    def publish_counts(self) -> None:
        """Write this worker's request counts to its file if they changed (one process: no-op)."""
        if self._file is None:
            return
        with self._lock:
            counts = list(self._counts.values())
        generations = (self._tensor_bytes.generation, *(c.generation for c in counts))
        with self._write_lock:
            if generations == self._written:
                return
            try:
                self._file.write(self._encoded(counts))
            except OSError as error:
                # Readers keep the last file written; the next publish tries again.
                if not self._write_failing:
                    log.warning("cannot write the request counts (retrying): %s", error)
                self._write_failing = True
                return
            if self._write_failing:
                log.info("request counts written again")
            self._write_failing = False
            self._written = generations

    def _encoded(self, counts: list[VersionCounts]) -> list[str]:
        """Every version's part of the counts file, encoded again only where it changed: a
        worker keeps every version it served (see drop_version), most of them idle."""
        parts = [encode(self._tensor_bytes.samples())]
        for version in counts:
            cached = self._parts.get(version)
            if cached is None or cached[0] != version.generation:
                generation, samples = version.snapshot()
                cached = self._parts[version] = (generation, encode(samples))
            parts.append(cached[1])
        return parts

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
        A worker's files keep the counts (sums over processes must not go backwards) and
        prometheus-client's keep the pending gauge's series, zeroed here.
        """
        with self._lock:
            bound = self._bound.pop((model, version), None)
            if self._file is None:
                self._counts.pop((model, version), None)
        if bound is not None:
            bound.retire()
        if not MULTIPROCESS:
            self.pending.remove_by_labels({"model": model, "version": version})

    def version(self, model: str, version: str) -> VersionMetrics:
        """The metrics of one model version."""
        key = (model, version)
        with self._lock:
            bound = self._bound.get(key)
            if bound is None:
                # Under the lock: building one binds the pending gauge's function, and a
                # second built in a race would bind one that sees no scheduler.
                counts = self._counts.get(key)
                if counts is None:
                    counts = self._counts[key] = VersionCounts(model, version)
                bound = self._bound[key] = VersionMetrics(self, counts)
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
    """What one model version records: its request counts and its pending requests."""

    def __init__(self, metrics: ServerMetrics, counts: VersionCounts) -> None:
        self._lock = threading.Lock()
        self._counts = counts
        model, version = counts.labels["model"], counts.labels["version"]
        # Read at scrape time from the schedulers serving this version (two while one drains
        # during a reload), so the hot path updates no gauge. In multiprocess mode scrapes
        # read the files only: publish_pending() writes the value there.
        self._pending_sources: list[Callable[[], int]] = []
        self._pending = metrics.pending.labels(model, version)
        self._pending.set_function(self._pending_total)
        # Set when the version stops serving.
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

    def add_instance(self, instance: str, device: str) -> tuple[str, str]:
        """Count the executions of one instance ("0", "1", ...) on one device ("gpu:1"); the
        key to pass to record_execution."""
        self._counts.add_instance(instance, device)
        return (instance, device)

    def record_request(
        self, outcome: str, total_ns: int, queue_ns: int | None, batch_size: int = 1
    ) -> None:
        """Record one finished request; queue_ns is None when it never reached the queue.

        `batch_size` counts in trtserve_inference_count (batch items, as the protocol
        defines it) when the request succeeded; every other outcome is a failure.
        """
        self._counts.record_request(outcome, total_ns, queue_ns, batch_size)

    def record_execution(
        self,
        batch_size: int,
        requests: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        instance: tuple[str, str] | None = None,
    ) -> None:
        """Record one executed batch made of `requests` requests, on `instance` (a key from
        add_instance) if given."""
        self._counts.record_execution(
            batch_size, requests, (input_ns, infer_ns, output_ns), instance
        )
