"""What inference requests record, kept as plain numbers and turned into samples when read.

A request used to update about thirty prometheus-client counters and histograms, each with its
own lock and several calls: 18 µs in a tight loop and, under load on two cores, about a fifth of
the event loop's time per request for a small model. Here a request or an execution takes one
lock and adds to numbers; `samples()` builds the Prometheus samples (the same names and labels
as prometheus-client would) when /metrics is scraped or ModelStatistics is asked for.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping

from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# Latency buckets in seconds, from 50 us (a tiny model on a warm path) to 30 s.
LATENCY_BUCKETS = (
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
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PHASES = ("input", "infer", "output")

# Family names (a counter's samples add "_total", a histogram's "_bucket", "_count", "_sum").
REQUESTS = "trtserve_requests"
REQUEST_SECONDS = "trtserve_request_seconds"
INFERENCE_COUNT = "trtserve_inference_count"
LAST_INFERENCE = "trtserve_last_inference_timestamp_seconds"
REQUEST_DURATION = "trtserve_request_duration_seconds"
QUEUE = "trtserve_queue_duration_seconds"
PHASE_DURATION = {phase: f"trtserve_compute_{phase}_duration_seconds" for phase in PHASES}
COMPUTE_REQUESTS = "trtserve_compute_requests"
COMPUTE_SECONDS = "trtserve_request_compute_seconds"
BATCH_SIZE = "trtserve_batch_size"
BATCH_EXECUTIONS = "trtserve_batch_executions"
BATCH_COMPUTE_SECONDS = "trtserve_batch_compute_seconds"
INSTANCE_EXECUTIONS = "trtserve_instance_executions"
TENSOR_BYTES = "trtserve_tensor_bytes"

TENSOR_DIRECTIONS = ("input", "output")
TENSOR_PATHS = ("inline", "system_shared_memory", "cuda_shared_memory")

Labels = dict[str, str]


class Buckets:
    """A histogram's observations: a count per bucket (not cumulative) and their sum."""

    def __init__(self, bounds: tuple[float, ...], created: float) -> None:
        self._bounds = bounds
        self._created = created
        self._le = tuple(floatToGoString(b) for b in (*bounds, math.inf))
        # The last slot counts what is above every bound (Prometheus's +Inf bucket).
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (the caller holds its owner's lock)."""
        # A value equal to a bound belongs to that bucket (Prometheus's `le`).
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def samples(self, name: str, labels: Labels) -> Iterator[Sample]:
        """The histogram's samples: cumulative buckets, count and sum."""
        cumulative = 0
        for le, count in zip(self._le, self._counts, strict=True):
            cumulative += count
            yield Sample(f"{name}_bucket", {**labels, "le": le}, cumulative)
        yield Sample(f"{name}_count", labels, cumulative)
        yield Sample(f"{name}_sum", labels, self._sum)
        yield Sample(f"{name}_created", labels, self._created)


class _Batch:
    """Executions of one exact batch size and their compute seconds by phase."""

    __slots__ = ("created", "executions", "infer_s", "input_s", "output_s")

    def __init__(self) -> None:
        self.created = time.time()
        self.executions = 0
        self.input_s = 0.0
        self.infer_s = 0.0
        self.output_s = 0.0


class VersionCounts:
    """Everything the requests and executions of one model version record."""

    def __init__(self, model: str, version: str) -> None:
        self.labels: Labels = {"model": model, "version": version}
        self._lock = threading.Lock()
        # Bumped by every record, so a writer of these counts knows whether they changed.
        self.generation = 0
        # When each series appeared (Unix time): prometheus-client exports it as `_created`.
        self._created = time.time()
        # Seeded so that a version shows its main series (at zero) before its first request.
        self._requests = {"success": 0, "cancelled": 0}
        self._outcome_created = dict.fromkeys(self._requests, self._created)
        self._success_s = 0.0
        self._fail_s = 0.0
        self._inference_count = 0
        self._last_inference_s = 0.0
        self._request_duration = Buckets(LATENCY_BUCKETS, self._created)
        self._queue = Buckets(LATENCY_BUCKETS, self._created)
        self._phase_duration = tuple(Buckets(LATENCY_BUCKETS, self._created) for _ in PHASES)
        self._compute_requests = 0
        self._compute_input_s = 0.0
        self._compute_infer_s = 0.0
        self._compute_output_s = 0.0
        self._batch_size = Buckets(BATCH_BUCKETS, self._created)
        self._batches: dict[int, _Batch] = {}
        self._instances: dict[tuple[str, str], int] = {}
        self._instance_created: dict[tuple[str, str], float] = {}

    def add_instance(self, instance: str, device: str) -> None:
        """Show an instance's execution count (at zero until it executes)."""
        with self._lock:
            self.generation += 1
            self._count_instance((instance, device), 0)

    def _count_instance(self, instance: tuple[str, str], executions: int) -> None:
        count = self._instances.get(instance)
        if count is None:
            self._instance_created[instance] = time.time()
            count = 0
        self._instances[instance] = count + executions

    def record_request(
        self, outcome: str, total_ns: int, queue_ns: int | None, batch_size: int
    ) -> None:
        """One finished request: see VersionMetrics.record_request."""
        seconds = total_ns / 1e9
        with self._lock:
            self.generation += 1
            count = self._requests.get(outcome)
            if count is None:
                self._outcome_created[outcome] = time.time()
                count = 0
            self._requests[outcome] = count + 1
            self._request_duration.observe(seconds)
            if outcome == "success":
                self._success_s += seconds
                self._inference_count += batch_size
                # Whole milliseconds, the protocol's unit, so reading back gives them exactly.
                self._last_inference_s = time.time_ns() // 1_000_000 / 1e3
            else:
                self._fail_s += seconds
            if queue_ns is not None:
                self._queue.observe(queue_ns / 1e9)

    def record_execution(
        self,
        batch_size: int,
        requests: int,
        phase_ns: tuple[int, int, int],
        instance: tuple[str, str] | None,
    ) -> None:
        """One executed batch: see VersionMetrics.record_execution."""
        input_s, infer_s, output_s = (ns / 1e9 for ns in phase_ns)
        with self._lock:
            self.generation += 1
            self._batch_size.observe(batch_size)
            phase_input, phase_infer, phase_output = self._phase_duration
            phase_input.observe(input_s)
            phase_infer.observe(infer_s)
            phase_output.observe(output_s)
            # Per-request durations, as Triton reports them: each request carries its batch's.
            self._compute_requests += requests
            self._compute_input_s += input_s * requests
            self._compute_infer_s += infer_s * requests
            self._compute_output_s += output_s * requests
            batch = self._batches.get(batch_size)
            if batch is None:
                batch = self._batches[batch_size] = _Batch()
            batch.executions += 1
            batch.input_s += input_s
            batch.infer_s += infer_s
            batch.output_s += output_s
            if instance is not None:
                self._count_instance(instance, 1)

    def samples(self) -> list[Sample]:
        """Every sample of this version, as prometheus-client would export it."""
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, list[Sample]]:
        """The samples and the generation they were taken at."""
        with self._lock:
            return self.generation, list(self._samples())

    def _samples(self) -> Iterator[Sample]:
        labels, created = self.labels, self._created
        for outcome, count in self._requests.items():
            by_outcome = {**labels, "outcome": outcome}
            yield from _counter(REQUESTS, by_outcome, count, self._outcome_created[outcome])
        yield from _counter(
            REQUEST_SECONDS, {**labels, "result": "success"}, self._success_s, created
        )
        yield from _counter(REQUEST_SECONDS, {**labels, "result": "fail"}, self._fail_s, created)
        yield from _counter(INFERENCE_COUNT, labels, self._inference_count, created)
        yield Sample(LAST_INFERENCE, labels, self._last_inference_s)
        yield from self._request_duration.samples(REQUEST_DURATION, labels)
        yield from self._queue.samples(QUEUE, labels)
        for phase, buckets in zip(PHASES, self._phase_duration, strict=True):
            yield from buckets.samples(PHASE_DURATION[phase], labels)
        yield from _counter(COMPUTE_REQUESTS, labels, self._compute_requests, created)
        compute = (self._compute_input_s, self._compute_infer_s, self._compute_output_s)
        for phase, seconds in zip(PHASES, compute, strict=True):
            yield from _counter(COMPUTE_SECONDS, {**labels, "phase": phase}, seconds, created)
        yield from self._batch_size.samples(BATCH_SIZE, labels)
        for size, batch in self._batches.items():
            sized = {**labels, "batch_size": str(size)}
            yield from _counter(BATCH_EXECUTIONS, sized, batch.executions, batch.created)
            by_phase = (batch.input_s, batch.infer_s, batch.output_s)
            for phase, value in zip(PHASES, by_phase, strict=True):
                phased = {**sized, "phase": phase}
                yield from _counter(BATCH_COMPUTE_SECONDS, phased, value, batch.created)
        for (instance, device), count in self._instances.items():
            placed = {**labels, "instance": instance, "device": device}
            when = self._instance_created[instance, device]
            yield from _counter(INSTANCE_EXECUTIONS, placed, count, when)


def _counter(name: str, labels: Labels, value: float, created: float) -> Iterator[Sample]:
    """A counter's samples: its total and when it was created."""
    yield Sample(f"{name}_total", labels, value)
    yield Sample(f"{name}_created", labels, created)


class TensorBytes:
    """Tensor bytes of inference requests, by direction and by path (inline or by reference)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self._created = time.time()
        self._bytes = {(d, p): 0 for d in TENSOR_DIRECTIONS for p in TENSOR_PATHS}

    def add(self, direction: str, by_path: Mapping[str, int]) -> None:
        """Add one request's bytes of `direction` ("input", "output") per path."""
        with self._lock:
            self.generation += 1
            for path, nbytes in by_path.items():
                self._bytes[direction, path] += nbytes

    def samples(self) -> list[Sample]:
        with self._lock:
            return [
                sample
                for (d, p), nbytes in self._bytes.items()
                for sample in _counter(
                    TENSOR_BYTES, {"direction": d, "path": p}, nbytes, self._created
                )
            ]
