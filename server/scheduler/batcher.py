"""Dynamic batching: one queue per model version, one thread per model instance.

Requests wait in a bounded FIFO queue. Each instance's thread takes the oldest request and,
when the model batches, packs compatible requests behind it (same input dtypes and non-batch
shapes) up to `max_batch_size`, waiting at most `max_queue_delay` for the batch to reach its
preferred size. The thread executes the batch, splits the outputs and hands them back to the
event loop in one call.

Why threads do the batching and not the event loop: the loop also runs every gRPC call, and
for small models it is the bottleneck. Queueing a request costs it one lock and one future;
waiting for a batch, packing, executing, splitting and recording metrics happen on the
instance's thread, which also times sub-millisecond queue delays exactly (the loop's selector
sleeps in whole milliseconds). A GPU instance always issues its CUDA calls from its thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
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
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    GatheredArray,
    InputArray,
    PlacedOutput,
    RowTarget,
)
from trtserve.server.scheduler.placement import place, placeable
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
    # A request of a one-by-one model runs on the event loop itself, when an instance is free
    # and the model's recent executions took at most this long (compute time); 0: always on
    # the threads.
    max_inline_execution_us: int = 0

    @property
    def target_batch_size(self) -> int:
        """The batch size at which a batch is sent without waiting any longer."""
        if self.batching.preferred_batch_sizes:
            return min(max(self.batching.preferred_batch_sizes), self.max_batch_size)
        return self.max_batch_size

    @property
    def packs(self) -> bool:
        """Whether queued requests are packed into batches (Triton: dynamic batching)."""
        return self.max_batch_size > 0 and self.batching.enabled


@dataclass
class _Pending:
    request: InferenceRequest
    future: asyncio.Future[InferenceResponse]
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    # Arrived at an idle model after a quiet spell longer than the queue delay.
    alone: bool = False


# What an instance thread sends back to the loop: a request's future and its outcome.
_Outcome = InferenceResponse | ServerError
_Settlement = tuple[asyncio.Future[InferenceResponse], _Outcome]


class ModelScheduler:
    """Queues requests of one model version and runs them on its instances' threads."""

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
        self._instance_keys = [metrics.add_instance(str(p.index), p.device) for p in placements]
        self._queue: deque[_Pending] = deque()
        # The queued requests' batch sizes, summed.
        self._queued_rows = 0
        self._last_arrival_ns = 0
        # Guards the queue, `_in_flight`, `_busy` and `_closing` between the loop and the
        # threads.
        self._changed = threading.Condition()
        self._closing = False
        self._in_flight = 0
        # Instances executing now, on their thread or inline on the loop.
        self._busy = [False] * len(self._instances)
        # Recent execution times (exponential average), for choosing to run inline.
        self._recent_ns = float("inf")
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start one thread per instance; outcomes go back to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._metrics.add_pending_source(self._pending_count)
        self._threads = [
            threading.Thread(
                target=self._work, args=(i,), name=f"{self.config.model}-{i}", daemon=True
            )
            for i in range(len(self._instances))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return self._pending_count()

    def _pending_count(self) -> int:
        with self._changed:
            return len(self._queue) + self._in_flight

    async def submit(self, request: InferenceRequest) -> InferenceResponse:
        """Queue a request and wait for its outputs.

        The request is released (`InferenceRequest.release`) exactly once, by whichever path
        it leaves the scheduler: refused here, dropped from the queue, or executed.
        """
        if self._closing:
            request.release()
            raise Unavailable(f"model '{self.config.model}' is unloading")
        inline = self._claim_inline()
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        if inline is not None:
            return self._run_inline(inline, _Pending(request, future))
        with self._changed:
            if len(self._queue) >= self.config.max_queue_size:
                request.release()
                raise ResourceExhausted(
                    f"model '{self.config.model}': queue is full "
                    f"(max_queue_size {self.config.max_queue_size}); retry later"
                )
            head = not self._queue
            pending = _Pending(request, future)
            pending.alone = head and self._in_flight == 0 and self._quiet_since(pending.enqueued_ns)
            self._last_arrival_ns = pending.enqueued_ns
            self._queue.append(pending)
            self._queued_rows += request.batch_size
            # Wake a thread only when that changes what it would do: a new head starts a
            # batch; a full enough queue ends one's wait. A thread that finishes a batch looks
            # at the queue anyway, and one gathering a batch wakes when its delay is spent.
            if head or not self.config.packs or self._queued_rows >= self.config.target_batch_size:
                self._changed.notify()
        return await future

    def _claim_inline(self) -> int | None:
        """A free instance to run the next request on the loop itself, or None.

        For a model that runs requests one by one and executes them fast, handing a request
        to an instance thread and its answer back to the loop costs more than the execution
        (two thread wake-ups, the interpreter lock changing hands, a wake-up of the loop).
        Then, when nothing is queued and an instance is idle, the request runs right here;
        the loop is held only for about the recent execution time.
        """
        limit_ns = self.config.max_inline_execution_us * 1000
        if self.config.packs or self._recent_ns > limit_ns or self._queue:
            return None
        with self._changed:
            if self._queue or self._closing:
                return None
            for index, busy in enumerate(self._busy):
                if not busy:
                    self._busy[index] = True
                    self._in_flight += 1
                    return index
        return None

    def _run_inline(self, index: int, pending: _Pending) -> InferenceResponse:
        """Execute one request on instance `index` on the calling thread (the event loop)."""
        try:
            [(_future, outcome)] = self._execute(index, [pending])
        finally:
            pending.request.release()
            with self._changed:
                self._busy[index] = False
                self._in_flight -= 1
                if self._queue:
                    self._changed.notify_all()
        if isinstance(outcome, ServerError):
            raise outcome
        return outcome

    async def close(self, drain: bool = True) -> None:
        """Stop taking requests; finish the queued ones (or fail them) and stop the threads."""
        self._closing = True
        with self._changed:
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
                self._queued_rows = 0
            self._changed.notify_all()
        unloaded = Unavailable(f"model '{self.config.model}' was unloaded before the request ran")
        for p in dropped:
            p.request.release()
        _settle([(p.future, unloaded) for p in dropped])
        await asyncio.to_thread(self._join)
        self._metrics.remove_pending_source(self._pending_count)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    # --- on the instance threads -------------------------------------------------------------

    def _work(self, index: int) -> None:
        while True:
            batch = self._next_batch(index)
            if batch is None:
                return
            try:
                outcomes = self._execute(index, batch)
            finally:
                for p in batch:
                    p.request.release()
                with self._changed:
                    self._in_flight -= len(batch)
                    self._busy[index] = False
            # Settled only once they no longer count as pending: a client holding its answer
            # never finds its request in trtserve_pending_requests.
            self._hand_back(outcomes)

    def _next_batch(self, index: int) -> list[_Pending] | None:
        """The next batch for instance `index` (its requests counted in flight, the instance
        busy), or None once closed. Waits while the loop runs a request on that instance."""
        with self._changed:
            while True:
                self._drop_dead()
                ready = self._queue and not self._busy[index]
                if ready and (not self.config.packs or self._batch_is_due()):
                    batch = self._take_batch()
                    self._in_flight += len(batch)
                    self._busy[index] = True
                    if self._queue:
                        self._changed.notify()  # what is left needs another thread
                    return batch
                if not self._queue and self._closing:
                    return None
                # While the loop runs a request on this instance, only its end (a notify)
                # can change what this thread would do.
                self._changed.wait(None if self._busy[index] else self._seconds_to_wait())

    def _quiet_since(self, now_ns: int) -> bool:
        """Whether no request arrived within the queue delay before `now_ns`."""
        delay_ns = self.config.batching.max_queue_delay_us * 1000
        return now_ns - self._last_arrival_ns > delay_ns

    def _batch_is_due(self) -> bool:
        """Whether the queue's head should go now: full enough, delay spent, or closing.

        A request that arrived alone (nothing executing, nothing arrived for longer than the
        delay) goes at once too: waiting for company that is not coming would only add the
        whole delay to a lone client's latency.
        """
        if self._closing or self._queued_rows >= self.config.target_batch_size:
            return True
        if self._queue[0].alone and len(self._queue) == 1:
            return True
        return self._seconds_to_wait() == 0.0

    def _seconds_to_wait(self) -> float | None:
        """How long the head of the queue may still wait for company; None: no head."""
        if not self._queue:
            return None
        delay_ns = self.config.batching.max_queue_delay_us * 1000
        remaining_ns = self._queue[0].enqueued_ns + delay_ns - time.perf_counter_ns()
        return max(0.0, remaining_ns / 1e9)

    def _take_batch(self) -> list[_Pending]:
        first = self._queue.popleft()
        self._queued_rows -= first.request.batch_size
        batch = [first]
        # Without dynamic batching requests run one by one (as in Triton), whatever their size.
        if not self.config.packs:
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
                self._queued_rows -= candidate.request.batch_size
            else:
                kept.append(candidate)
        # Requests that did not fit keep their place at the head of the queue.
        self._queue.extendleft(reversed(kept))
        return batch

    def _drop_dead(self) -> None:
        """Remove cancelled requests and fail those whose deadline passed while queued."""
        if not self._queue:
            return
        now = time.monotonic()
        alive: deque[_Pending] = deque()
        expired: list[_Settlement] = []
        for p in self._queue:
            if p.future.done():
                p.request.release()
                continue
            if p.request.deadline is not None and p.request.deadline <= now:
                p.request.release()
                waited_ms = (time.perf_counter_ns() - p.enqueued_ns) / 1e6
                error = DeadlineExceeded(
                    f"model '{self.config.model}': request deadline passed after "
                    f"{waited_ms:.1f} ms in the queue"
                )
                expired.append((p.future, error))
                continue
            alive.append(p)
        if len(alive) != len(self._queue):
            self._queue = alive
            self._queued_rows = sum(p.request.batch_size for p in alive)
        if expired:
            self._hand_back(expired)

    def _execute(self, index: int, batch: list[_Pending]) -> list[_Settlement]:
        """Run one batch; each request's outcome, an error where the batch failed."""
        started_ns = time.perf_counter_ns()
        requests = [p.request for p in batch]
        try:
            result = self._instances[index].execute(
                _pack(requests), _union_outputs(requests), self._row_targets(requests)
            )
            outcomes = self._split(batch, result, started_ns)
        except ServerError as error:
            return [(p.future, error) for p in batch]
        except Exception as error:  # a backend bug must fail the batch, not the thread
            log.exception("model %s: execution failed", self.config.model)
            failure = Internal(f"model '{self.config.model}': execution failed: {error!r}")
            return [(p.future, failure) for p in batch]
        self._record(index, batch, result)
        # The backend's own timings (GPU work timed by CUDA events): unlike the clock here,
        # they do not grow while the thread waits for the interpreter lock, so the average
        # says how long an execution would hold the loop. Races between threads only blur it.
        t = result.timings
        took = t.compute_input_ns + t.compute_infer_ns + t.compute_output_ns
        recent = self._recent_ns
        self._recent_ns = took if recent == float("inf") else 0.8 * recent + 0.2 * took
        return outcomes

    def _record(self, index: int, batch: list[_Pending], result: ExecutionResult) -> None:
        t = result.timings
        self._metrics.record_execution(
            sum(p.request.batch_size for p in batch),
            len(batch),
            t.compute_input_ns,
            t.compute_infer_ns,
            t.compute_output_ns,
            self._instance_keys[index],
        )

    def _row_targets(self, requests: list[InferenceRequest]) -> dict[str, list[RowTarget]]:
        """Where each request's rows of each output go, for outputs passed by reference."""
        targets: dict[str, list[RowTarget]] = {}
        if len(requests) == 1 and not requests[0].output_targets:
            return targets
        batched = self.config.max_batch_size > 0
        first_row = 0
        for r in requests:
            for name, target in r.output_targets.items():
                rows = r.batch_size if batched else None
                targets.setdefault(name, []).append(RowTarget(first_row, rows, target))
            first_row += r.batch_size
        return targets

    def _split(
        self, batch: list[_Pending], result: ExecutionResult, started_ns: int
    ) -> list[_Settlement]:
        """Each request's own rows of the batch's outputs."""
        if len(batch) == 1 and not result.placed and not batch[0].request.output_targets:
            # One request, nothing in shared memory: its outputs are the batch's.
            p = batch[0]
            lone = {name: result.outputs[name] for name in p.request.output_names}
            return [(p.future, InferenceResponse(lone, started_ns - p.enqueued_ns))]
        outcomes: list[_Settlement] = []
        offset = 0
        sliced = self.config.max_batch_size > 0 and len(batch) > 1
        for p in batch:
            size = p.request.batch_size
            outputs: dict[str, np.ndarray | PlacedOutput] = {}
            for name in p.request.output_names:
                whole = result.outputs[name]
                if name in result.placed and name in p.request.output_targets:
                    shape = (size, *whole.shape[1:]) if sliced else tuple(whole.shape)
                    outputs[name] = PlacedOutput(whole.dtype, shape)
                elif isinstance(whole, PlacedOutput):
                    raise Internal(
                        f"model '{self.config.model}': output '{name}' was placed although "
                        "a request of the batch had no target for it"
                    )
                else:
                    outputs[name] = whole[offset : offset + size] if sliced else whole
            offset += size
            try:
                self._place(p.request, outputs)
            except ServerError as error:
                outcomes.append((p.future, error))
                continue
            outcomes.append((p.future, InferenceResponse(outputs, started_ns - p.enqueued_ns)))
        return outcomes

    @staticmethod
    def _place(request: InferenceRequest, outputs: dict[str, np.ndarray | PlacedOutput]) -> None:
        """Write the request's outputs the backend returned into the targets it named."""
        for name, target in request.output_targets.items():
            array = outputs.get(name)
            if array is not None and placeable(array):
                outputs[name] = place(name, array, target)

    def _hand_back(self, outcomes: list[_Settlement]) -> None:
        """Settle the futures on the event loop: one call for the whole batch."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            log.debug(
                "model %s: loop closed, %d outcome(s) dropped", self.config.model, len(outcomes)
            )


def _settle(outcomes: Sequence[_Settlement]) -> None:
    """On the event loop: set each future that is still waiting (cancelled ones are done)."""
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, ServerError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _pack(requests: list[InferenceRequest]) -> dict[str, InputArray]:
    if len(requests) == 1:
        return dict(requests[0].inputs)
    packed: dict[str, InputArray] = {}
    for name in requests[0].inputs:
        parts = [r.inputs[name] for r in requests]
        if any(isinstance(part, DeviceArray) for part in parts):
            # GPU memory: the backend copies each part to its place (see GatheredArray).
            packed[name] = GatheredArray(tuple(parts))
        else:
            packed[name] = np.concatenate(parts, axis=0)  # type: ignore[arg-type]
    return packed


def _union_outputs(requests: list[InferenceRequest]) -> tuple[str, ...]:
    if len(requests) == 1:
        return requests[0].output_names
    names: dict[str, None] = {}
    for r in requests:
        names.update(dict.fromkeys(r.output_names))
    return tuple(names)
