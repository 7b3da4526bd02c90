"""A load generator: `concurrency` tasks send the same ModelInfer request back to back.

Used by `trtserve bench` and the benchmarks. Latency is measured per request around the
awaited call (time.perf_counter_ns); throughput counts successful requests only. One Python
process tops out at a few thousand requests per second, so `processes` spreads the tasks over
several processes that start together after a barrier.

With `shared_memory` "system" or "cuda", each task sends its own request instead, whose inputs
and outputs lie in a shared-memory region of its own (see trtserve.client.bench_regions).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from trtserve.client import bench_regions
from trtserve.client import request as rq
from trtserve.client.aio import AsyncInferenceClient
from trtserve.client.bench_regions import SHARED_MEMORY_KINDS, SharedMemoryKind
from trtserve.client.errors import InferenceServerError
from trtserve.client.tls import TlsConfig
from trtserve.client.types import InferInput
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol.allocator import reuse_freed_memory

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class BenchResult:
    """What a load run measured; latencies in milliseconds, None when nothing succeeded."""

    model: str
    concurrency: int
    count: int
    errors: dict[str, int]
    elapsed_s: float
    throughput: float
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    shared_memory: SharedMemoryKind = "none"

    def to_json(self) -> str:
        """The result as a JSON object (for scripts)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def summary(self) -> str:
        """The result as a few human-readable lines."""

        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f} ms"

        transport = "" if self.shared_memory == "none" else f", {self.shared_memory} shared memory"
        lines = [
            f"model {self.model}, concurrency {self.concurrency}{transport}",
            f"requests: {self.count} ok, {sum(self.errors.values())} failed "
            f"in {self.elapsed_s:.3f} s",
            f"throughput: {self.throughput:.1f} infer/s",
            f"latency: p50 {ms(self.p50_ms)}, p90 {ms(self.p90_ms)}, p99 {ms(self.p99_ms)}, "
            f"mean {ms(self.mean_ms)}",
        ]
        lines += [f"errors {code}: {n}" for code, n in sorted(self.errors.items())]
        return "\n".join(lines)


def summarize(
    model: str,
    concurrency: int,
    latencies_ns: Sequence[int],
    errors: Mapping[str, int],
    elapsed_s: float,
    shared_memory: SharedMemoryKind = "none",
) -> BenchResult:
    """Throughput and latency percentiles from per-request latencies (successes only)."""
    count = len(latencies_ns)
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    if count:
        ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
        mean = float(ms.mean())
    return BenchResult(
        model=model,
        concurrency=concurrency,
        count=count,
        errors=dict(errors),
        elapsed_s=elapsed_s,
        throughput=count / elapsed_s if elapsed_s > 0 else 0.0,
        mean_ms=mean,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        shared_memory=shared_memory,
    )


def _check_limits(
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    processes: int = 1,
    shared_memory: str = "none",
) -> None:
    if shared_memory not in SHARED_MEMORY_KINDS:
        raise ValueError(
            f"shared_memory must be one of {', '.join(SHARED_MEMORY_KINDS)}, "
            f"received {shared_memory!r}"
        )
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, received {concurrency}")
    if processes < 1 or processes > concurrency:
        raise ValueError(
            f"processes must be between 1 and concurrency ({concurrency}), received {processes}"
        )
    if requests is None and duration_s is None:
        raise ValueError("give a request count or a duration")
    if requests is not None and requests < processes:
        raise ValueError(f"requests must be at least {processes}, received {requests}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration_s must be positive, received {duration_s}")


@dataclass
class _Samples:
    """What one process measured; start and end are time.monotonic_ns (system-wide)."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    start_ns: int = 0
    end_ns: int = 0


async def _drive(
    address: str,
    messages: Sequence[pb.ModelInferRequest],
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    timeout: float | None,
    on_done: Callable[[], None],
    before_start: Callable[[], None] = lambda: None,
    tls: TlsConfig | None = None,
) -> _Samples:
    """Warm up with one untimed request, then run `concurrency` looping tasks.

    Task i sends messages[i], or messages[0] when there is one message.
    """
    samples = _Samples()
    started = 0
    async with AsyncInferenceClient(address, timeout=timeout, tls=tls) as client:
        await client.send_infer_request(messages[0])
        before_start()
        deadline = None if duration_s is None else time.perf_counter_ns() + int(duration_s * 1e9)

        async def worker(message: pb.ModelInferRequest) -> None:
            nonlocal started
            while (requests is None or started < requests) and (
                deadline is None or time.perf_counter_ns() < deadline
            ):
                started += 1
                t0 = time.perf_counter_ns()
                try:
                    await client.send_infer_request(message)
                except InferenceServerError as e:
                    samples.errors[e.code.name] += 1
                else:
                    samples.latencies_ns.append(time.perf_counter_ns() - t0)
                on_done()

        samples.start_ns = time.monotonic_ns()
        shared = len(messages) == 1
        await asyncio.gather(*(worker(messages[0 if shared else i]) for i in range(concurrency)))
        samples.end_ns = time.monotonic_ns()
    return samples


async def run_load_async(
    address: str,
    model: str,
    inputs: Sequence[InferInput],
    concurrency: int = 8,
    requests: int | None = None,
    duration_s: float | None = None,
    progress: bool = False,
    *,
    version: str = "",
    timeout: float | None = None,
    tls: TlsConfig | None = None,
    shared_memory: SharedMemoryKind = "none",
) -> BenchResult:
    """Run the load in this event loop until `requests` were sent or `duration_s` passed.

    One untimed request goes first; its failure raises InferenceServerError. `shared_memory`
    "system" or "cuda" passes each task's tensors in a region of its own, registered before
    the run and unregistered and removed after it (also when it fails or is cancelled).
    """
    _check_limits(concurrency, requests, duration_s, shared_memory=shared_memory)
    message = rq.build_infer_request(model, inputs, version=version)
    async with bench_regions.worker_messages(
        shared_memory, address, message, inputs, concurrency, timeout=timeout, tls=tls
    ) as messages:
        with tqdm(total=requests, disable=not progress, unit="req", dynamic_ncols=True) as bar:
            samples = await _drive(
                address,
                messages,
                concurrency,
                requests,
                duration_s,
                timeout,
                lambda: bar.update(1),
                tls=tls,
            )
    elapsed_s = (samples.end_ns - samples.start_ns) / 1e9
    return summarize(
        model, concurrency, samples.latencies_ns, samples.errors, elapsed_s, shared_memory
    )


def run_load(
    address: str,
    model: str,
    inputs: Sequence[InferInput],
    concurrency: int = 8,
    requests: int | None = None,
    duration_s: float | None = None,
    progress: bool = False,
    *,
    version: str = "",
    timeout: float | None = None,
    processes: int = 1,
    tls: TlsConfig | None = None,
    shared_memory: SharedMemoryKind = "none",
) -> BenchResult:
    """Blocking load run; `processes > 1` splits concurrency and requests over processes.

    `shared_memory` is run_load_async's; the regions are made here and shared out.
    """
    _check_limits(concurrency, requests, duration_s, processes, shared_memory)
    if processes == 1:
        return asyncio.run(
            run_load_async(
                address,
                model,
                inputs,
                concurrency,
                requests,
                duration_s,
                progress,
                version=version,
                timeout=timeout,
                tls=tls,
                shared_memory=shared_memory,
            )
        )
    message = rq.build_infer_request(model, inputs, version=version)
    parts = [_share(concurrency, processes, i) for i in range(processes)]
    request_parts = [
        None if requests is None else _share(requests, processes, i) for i in range(processes)
    ]
    with bench_regions.worker_messages_blocking(
        shared_memory, address, message, inputs, concurrency, timeout=timeout, tls=tls
    ) as messages:
        all_samples = _run_processes(
            address,
            _message_parts(messages, parts),
            parts,
            request_parts,
            duration_s,
            timeout,
            progress,
            requests,
            tls,
        )
    latencies = [t for s in all_samples for t in s.latencies_ns]
    errors: Counter[str] = sum((s.errors for s in all_samples), Counter())
    elapsed_s = (max(s.end_ns for s in all_samples) - min(s.start_ns for s in all_samples)) / 1e9
    return summarize(model, concurrency, latencies, errors, elapsed_s, shared_memory)


def _message_parts(
    messages: Sequence[pb.ModelInferRequest], concurrency_parts: Sequence[int]
) -> list[list[pb.ModelInferRequest]]:
    """Each process's messages: the one shared message, or its tasks' own, in order."""
    if len(messages) == 1:
        return [list(messages) for _ in concurrency_parts]
    parts: list[list[pb.ModelInferRequest]] = []
    start = 0
    for count in concurrency_parts:
        parts.append(list(messages[start : start + count]))
        start += count
    return parts


def _share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as possible into `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def _process_main(
    address: str,
    messages_bytes: list[bytes],
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    timeout: float | None,
    tls: TlsConfig | None,
    barrier: Any,
    counter: Any,
    results: Any,
) -> None:
    """One load process: warm up, wait for the others, run, send back the samples."""
    reuse_freed_memory()  # this process only moves messages: see trtserve.protocol.allocator

    def count() -> None:
        with counter.get_lock():
            counter.value += 1

    try:
        messages = [pb.ModelInferRequest.FromString(m) for m in messages_bytes]
        samples = asyncio.run(
            _drive(
                address,
                messages,
                concurrency,
                requests,
                duration_s,
                timeout,
                count,
                lambda: barrier.wait(),
                tls,
            )
        )
        results.put(samples)
    except BaseException as e:
        # Release the others from the barrier; the parent raises the first failure.
        barrier.abort()
        results.put(e)


def _run_processes(
    address: str,
    message_parts: list[list[pb.ModelInferRequest]],
    concurrency_parts: list[int],
    request_parts: list[int | None],
    duration_s: float | None,
    timeout: float | None,
    progress: bool,
    total_requests: int | None,
    tls: TlsConfig | None,
) -> list[_Samples]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(concurrency_parts))
    counter = ctx.Value("q", 0)
    results = ctx.Queue()
    shared = (barrier, counter, results)
    procs = [
        ctx.Process(
            target=_process_main,
            args=(
                address,
                [m.SerializeToString() for m in ms],
                c,
                r,
                duration_s,
                timeout,
                tls,
                *shared,
            ),
            daemon=True,
        )
        for ms, c, r in zip(message_parts, concurrency_parts, request_parts, strict=True)
    ]
    for p in procs:
        p.start()
    collected: list[_Samples | BaseException] = []
    try:
        with tqdm(
            total=total_requests, disable=not progress, unit="req", dynamic_ncols=True
        ) as bar:
            while len(collected) < len(procs):
                try:
                    collected.append(results.get(timeout=0.2))
                except queue.Empty:
                    if not any(p.is_alive() for p in procs):
                        # A result put just before its process exited is still in the pipe.
                        try:
                            collected.append(results.get(timeout=1.0))
                        except queue.Empty:
                            raise RuntimeError("a load process exited without a result") from None
                bar.update(counter.value - bar.n)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    failures = [c for c in collected if isinstance(c, BaseException)]
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if failures:
        raise (real or failures)[0]
    return [c for c in collected if isinstance(c, _Samples)]
