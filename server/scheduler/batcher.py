"""Dynamic batching: one queue per model version, one worker per model instance.

Requests wait in a bounded FIFO queue. An idle worker takes the oldest request and, when the
model batches, packs compatible requests behind it (same input dtypes and non-batch shapes) up
to `max_batch_size`, waiting at most `max_queue_delay` for the batch to reach its preferred size.
Each instance executes on its own thread, so the event loop never blocks on inference and a
GPU instance always issues its CUDA calls from the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from trtserve.server.backends.base import ExecutionResult, ModelInstance, Placement
from trtserve.server.errors import (
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    ServerError,
    Unavailable,
)
from trtserve.server.metrics import VersionMetrics
from trtserve.server.scheduler.request import InferenceRequest, InferenceResponse
from trtserve.server.specs import BatchingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """How one model version is scheduled."""

    model: str
    version: str
    # 0: run requests one by one, whatever their shape.
    max_batch_size: int
    batching: BatchingSettings
    max_queue_size: int

    @property
    def target_batch_size(self) -> int:
        """The batch size at which a batch is sent without waiting any longer."""
        if self.batching.preferred_batch_sizes:
            return min(max(self.batching.preferred_batch_sizes), self.max_batch_size)
        return self.max_batch_size


@dataclass
class _Pending:
    request: InferenceRequest
    future: asyncio.Future[InferenceResponse]
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


class ModelScheduler:
    """Queues requests of one model version and runs them on its instances."""

    def __init__(
        self,
        config: SchedulerConfig,
        instances: Sequence[ModelInstance],
        placements: Sequence[Placement],
        metrics: VersionMetrics,
    ) -> None:
        """`placements[i]` is where `instances[i]` runs (it labels its execution count)."""
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        if len(placements) != len(instances):
            raise ValueError(
                f"placements: expected one per instance ({len(instances)}), "
                f"received {len(placements)}"
            )
        self.config = config
        self._instances = list(instances)
        self._metrics = metrics
        self._executions = [metrics.instance_executions(str(p.index), p.device) for p in placements]
        self._queue: deque[_Pending] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._in_flight = 0
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"{config.model}-{i}")
            for i in range(len(self._instances))
        ]
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start one worker per instance on the running event loop."""
        self._workers = [
            asyncio.create_task(self._work(i), name=f"{self.config.model}-worker-{i}")
            for i in range(len(self._instances))
        ]

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._in_flight

    async def submit(self, request: InferenceRequest) -> InferenceResponse:
        """Queue a request and wait for its outputs."""
        if self._closing:
            raise Unavailable(f"model '{self.config.model}' is unloading")
        if len(self._queue) >= self.config.max_queue_size:
            raise ResourceExhausted(
                f"model '{self.config.model}': queue is full "
                f"(max_queue_size {self.config.max_queue_size}); retry later"
            )
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        self._metrics.pending.inc()
        self._notify()
        try:
            return await future
        finally:
            self._metrics.pending.dec()

    async def close(self, drain: bool = True) -> None:
        """Stop taking requests; finish the queued ones (or fail them) and stop the workers."""
        self._closing = True
        if not drain:
            while self._queue:
                self._fail(
                    self._queue.popleft(),
                    Unavailable(f"model '{self.config.model}' was unloaded before the request ran"),
                )
        self._notify()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def _work(self, index: int) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            self._in_flight += len(batch)
            try:
                await self._execute(index, batch)
            finally:
                self._in_flight -= len(batch)

    async def _wait_for_change(self, timeout: float | None = None) -> None:
        # The queue was checked with no await since, so no enqueue can slip in before the
        # waiter is registered. A bare future is cheaper than wait_for, which makes a task.
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)

    async def _next_batch(self) -> list[_Pending] | None:
        while True:
            self._drop_dead()
            if self._queue:
                break
            if self._closing:
                return None
            await self._wait_for_change()
        if self.config.max_batch_size > 0 and self.config.batching.enabled:
            await self._gather_window()
        return self._take_batch()

    async def _gather_window(self) -> None:
        """Wait until the batch can reach its target size or the oldest request's delay ends."""
        delay_ns = self.config.batching.max_queue_delay_us * 1000
        yielded = False
        while self._queue and not self._closing:
            if self._queued_batch_size() >= self.config.target_batch_size:
                return
            remaining_ns = self._queue[0].enqueued_ns + delay_ns - time.perf_counter_ns()
            if remaining_ns <= 0:
                return
            if remaining_ns < 1_000_000:
                # The selector sleeps in whole milliseconds, and spinning until the deadline
                # costs the event loop more than it saves. One pass of the loop takes in the
                # requests that arrived together; then the batch goes.
                if yielded:
                    return
                yielded = True
                await asyncio.sleep(0)
            else:
                await self._wait_for_change(remaining_ns / 1e9)
            self._drop_dead()

    def _queued_batch_size(self) -> int:
        return sum(p.request.batch_size for p in self._queue)

    def _take_batch(self) -> list[_Pending]:
        first = self._queue.popleft()
        batch = [first]
        # Without dynamic batching requests run one by one (as in Triton), whatever their size.
        if self.config.max_batch_size <= 0 or not self.config.batching.enabled:
            return batch
        total = first.request.batch_size
        signature = first.request.signature
        kept: deque[_Pending] = deque()
        while self._queue and total < self.config.max_batch_size:
            candidate = self._queue.popleft()
            fits = total + candidate.request.batch_size <= self.config.max_batch_size
            if fits and candidate.request.signature == signature:
                batch.append(candidate)
                total += candidate.request.batch_size
            else:
                kept.append(candidate)
        # Requests that did not fit keep their place at the head of the queue.
        self._queue.extendleft(reversed(kept))
        return batch

    def _drop_dead(self) -> None:
        """Remove cancelled requests and fail those whose deadline passed while queued."""
        now = time.monotonic()
        alive: deque[_Pending] = deque()
        for p in self._queue:
            if p.future.done():
                continue
            if p.request.deadline is not None and p.request.deadline <= now:
                self._fail(
                    p,
                    DeadlineExceeded(
                        f"model '{self.config.model}': request deadline passed after "
                        f"{(time.perf_counter_ns() - p.enqueued_ns) / 1e6:.1f} ms in the queue"
                    ),
                )
                continue
            alive.append(p)
        self._queue = alive

    def _fail(self, pending: _Pending, error: ServerError) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)

    async def _execute(self, index: int, batch: list[_Pending]) -> None:
        started_ns = time.perf_counter_ns()
        inputs = _pack([p.request for p in batch])
        output_names = _union_outputs([p.request for p in batch])
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._executors[index], self._instances[index].execute, inputs, output_names
            )
        except ServerError as error:
            for p in batch:
                self._fail(p, error)
            return
        except Exception as error:  # a backend bug must fail the batch, not the worker
            log.exception("model %s: execution failed", self.config.model)
            for p in batch:
                self._fail(p, Internal(f"model '{self.config.model}': execution failed: {error}"))
            return
        self._record(index, batch, result)
        self._deliver(batch, result, started_ns)

    def _record(self, index: int, batch: list[_Pending], result: ExecutionResult) -> None:
        self._executions[index].inc()
        t = result.timings
        self._metrics.record_execution(
            sum(p.request.batch_size for p in batch),
            len(batch),
            t.compute_input_ns,
            t.compute_infer_ns,
            t.compute_output_ns,
        )

    def _deliver(self, batch: list[_Pending], result: ExecutionResult, started_ns: int) -> None:
        offset = 0
        batched = self.config.max_batch_size > 0
        for p in batch:
            size = p.request.batch_size
            outputs = {
                name: (
                    result.outputs[name][offset : offset + size]
                    if batched and len(batch) > 1
                    else result.outputs[name]
                )
                for name in p.request.output_names
            }
            offset += size
            if not p.future.done():
                p.future.set_result(InferenceResponse(outputs, started_ns - p.enqueued_ns))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _pack(requests: list[InferenceRequest]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return requests[0].inputs
    return {
        name: np.concatenate([r.inputs[name] for r in requests], axis=0)
        for name in requests[0].inputs
    }


def _union_outputs(requests: list[InferenceRequest]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for r in requests:
        names.update(dict.fromkeys(r.output_names))
    return tuple(names)
