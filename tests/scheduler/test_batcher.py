"""The dynamic batcher: packing, splitting, limits, deadlines and shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from trtserve.server.backends.base import (
    ExecutionResult,
    ExecutionTimings,
    ModelInstance,
    Placement,
)
from trtserve.server.errors import DeadlineExceeded, Internal, ResourceExhausted, Unavailable
from trtserve.server.metrics import ServerMetrics
from trtserve.server.runtime.tensor_buffers import NO_TARGETS, InputArray, RowTarget
from trtserve.server.scheduler.batcher import ModelScheduler, SchedulerConfig
from trtserve.server.scheduler.request import InferenceRequest
from trtserve.server.specs import BatchingSettings, DeviceKind

T = TypeVar("T")


class GatedDoubler(ModelInstance):
    """Doubles `x`; each execution waits for the gate so tests control when batches run."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batch_sizes: list[int] = []
        self.fail_next = False

    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        self.started.set()
        assert self.gate.wait(10), "test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("backend blew up")
        x = inputs["x"]
        self.batch_sizes.append(int(x.shape[0]))
        return ExecutionResult({"y": x * 2}, ExecutionTimings(1, 2, 3))

    def close(self) -> None:
        pass


def make_scheduler(
    instance: ModelInstance,
    max_batch_size: int = 8,
    max_queue_size: int = 100,
    delay_us: int = 0,
    batching: bool = True,
) -> ModelScheduler:
    config = SchedulerConfig(
        "m", "1", max_batch_size, BatchingSettings(batching, (), delay_us), max_queue_size
    )
    metrics = ServerMetrics(CollectorRegistry()).version("m", "1")
    return ModelScheduler(config, [instance], [Placement(DeviceKind.CPU)], metrics)


def request(
    rows: int, value: float, width: int = 4, deadline: float | None = None
) -> InferenceRequest:
    x = np.full((rows, width), value, dtype=np.float32)
    return InferenceRequest({"x": x}, ("y",), rows, deadline)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


async def wait_started(instance: GatedDoubler) -> None:
    """Wait until the instance is inside `execute` (its first batch is in flight)."""
    assert await asyncio.to_thread(instance.started.wait, 10)


def test_mixed_batch_sizes_are_packed_and_split_exactly() -> None:
    instance = GatedDoubler()

    async def scenario() -> list[np.ndarray]:
        scheduler = make_scheduler(instance)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)  # the worker is busy: the next ones queue up together
        sizes = [1, 3, 2, 2]
        rest = [
            asyncio.create_task(scheduler.submit(request(n, float(i + 1))))
            for i, n in enumerate(sizes)
        ]
        while scheduler.pending < 1 + len(sizes):
            await asyncio.sleep(0)
        instance.gate.set()
        results = await asyncio.gather(first, *rest)
        await scheduler.close()
        return [r.outputs["y"] for r in results]

    outputs = run(scenario)
    assert instance.batch_sizes == [1, 8]
    for i, (out, n) in enumerate(zip(outputs[1:], [1, 3, 2, 2], strict=True)):
        assert out.shape == (n, 4)
        np.testing.assert_array_equal(out, np.full((n, 4), 2.0 * (i + 1), dtype=np.float32))


def test_batches_never_exceed_max_batch_size_and_keep_order() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_batch_size=4)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)
        tasks = [asyncio.create_task(scheduler.submit(request(3, float(i)))) for i in range(3)]
        while scheduler.pending < 4:
            await asyncio.sleep(0)
        instance.gate.set()
        await asyncio.gather(first, *tasks)
        await scheduler.close()

    run(scenario)
    assert instance.batch_sizes == [1, 3, 3, 3]


def test_requests_with_different_shapes_are_not_packed_together() -> None:
    instance = GatedDoubler()

    async def scenario() -> list[tuple[int, ...]]:
        scheduler = make_scheduler(instance)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)
        wide = asyncio.create_task(scheduler.submit(request(1, 1.0, width=8)))
        narrow = asyncio.create_task(scheduler.submit(request(2, 2.0)))
        while scheduler.pending < 3:
            await asyncio.sleep(0)
        instance.gate.set()
        results = await asyncio.gather(first, wide, narrow)
        await scheduler.close()
        return [r.outputs["y"].shape for r in results]

    shapes = run(scenario)
    assert shapes == [(1, 4), (1, 8), (2, 4)]
    assert len(instance.batch_sizes) == 3


def test_unbatched_model_runs_requests_one_by_one() -> None:
    instance = GatedDoubler()
    instance.gate.set()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_batch_size=0)
        scheduler.start()
        await asyncio.gather(*(scheduler.submit(request(2, float(i))) for i in range(5)))
        await scheduler.close()

    run(scenario)
    assert instance.batch_sizes == [2] * 5


def test_full_queue_is_refused_with_resource_exhausted() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_queue_size=2)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)
        queued = [asyncio.create_task(scheduler.submit(request(1, 1.0))) for _ in range(2)]
        while scheduler.pending < 3:
            await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="max_queue_size 2"):
            await scheduler.submit(request(1, 2.0))
        instance.gate.set()
        await asyncio.gather(first, *queued)
        assert scheduler.pending == 0
        await scheduler.close()

    run(scenario)


def test_request_whose_deadline_passed_in_the_queue_is_dropped_unexecuted() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)
        expired = asyncio.create_task(scheduler.submit(request(5, 1.0, deadline=time.monotonic())))
        alive = asyncio.create_task(scheduler.submit(request(2, 2.0)))
        while scheduler.pending < 3:
            await asyncio.sleep(0)
        instance.gate.set()
        await first
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await expired
        assert (await alive).outputs["y"].shape == (2, 4)
        await scheduler.close()

    run(scenario)
    assert instance.batch_sizes == [1, 2]


def test_cancelled_request_is_not_executed() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)
        doomed = asyncio.create_task(scheduler.submit(request(4, 1.0)))
        while scheduler.pending < 2:
            await asyncio.sleep(0)
        doomed.cancel()
        instance.gate.set()
        await first
        await scheduler.close()
        assert scheduler.pending == 0

    run(scenario)
    assert instance.batch_sizes == [1]


def test_backend_failure_fails_its_batch_and_the_worker_goes_on() -> None:
    instance = GatedDoubler()
    instance.fail_next = True
    instance.gate.set()

    async def scenario() -> None:
        scheduler = make_scheduler(instance)
        scheduler.start()
        with pytest.raises(Internal, match="backend blew up"):
            await scheduler.submit(request(1, 0.0))
        result = await scheduler.submit(request(1, 3.0))
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 4), 6.0, np.float32))
        await scheduler.close()

    run(scenario)


def test_close_with_drain_finishes_queued_requests() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_batch_size=0)
        scheduler.start()
        tasks = [asyncio.create_task(scheduler.submit(request(1, float(i)))) for i in range(3)]
        await wait_started(instance)
        closing = asyncio.create_task(scheduler.close(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="unloading"):
            await scheduler.submit(request(1, 9.0))
        instance.gate.set()
        await closing
        assert [t.result().outputs["y"][0, 0] for t in tasks] == [0.0, 2.0, 4.0]

    run(scenario)


def test_close_without_drain_fails_queued_requests() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_batch_size=0)
        scheduler.start()
        running = asyncio.create_task(scheduler.submit(request(1, 1.0)))
        await wait_started(instance)
        queued = asyncio.create_task(scheduler.submit(request(1, 2.0)))
        while scheduler.pending < 2:
            await asyncio.sleep(0)
        closing = asyncio.create_task(scheduler.close(drain=False))
        with pytest.raises(Unavailable, match="unloaded before the request ran"):
            await queued
        instance.gate.set()
        await closing
        assert (await running).outputs["y"][0, 0] == 2.0

    run(scenario)


def test_queue_delay_lets_a_batch_fill_up() -> None:
    instance = GatedDoubler()
    instance.gate.set()

    async def scenario() -> None:
        # A long delay: the first request waits for company, and 8 rows send the batch at once.
        scheduler = make_scheduler(instance, delay_us=30_000_000)
        scheduler.start()
        tasks = [asyncio.create_task(scheduler.submit(request(2, float(i)))) for i in range(4)]
        await asyncio.gather(*tasks)
        await scheduler.close()

    run(scenario)
    assert instance.batch_sizes == [8]


def test_without_dynamic_batching_requests_run_one_by_one() -> None:
    instance = GatedDoubler()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_batch_size=8, batching=False)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        await wait_started(instance)
        queued = [asyncio.create_task(scheduler.submit(request(2, float(i)))) for i in range(3)]
        while scheduler.pending < 4:
            await asyncio.sleep(0)
        instance.gate.set()
        await asyncio.gather(first, *queued)
        await scheduler.close()

    run(scenario)
    assert instance.batch_sizes == [1, 2, 2, 2]


def test_each_instance_counts_its_executions_under_its_device() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry).version("m", "1")
    instances = [GatedDoubler(), GatedDoubler()]
    placements = [Placement(DeviceKind.GPU, 0, 0), Placement(DeviceKind.GPU, 1, 1)]
    config = SchedulerConfig("m", "1", 0, BatchingSettings(False, (), 0), 10)

    async def scenario() -> None:
        scheduler = ModelScheduler(config, instances, placements, metrics)
        scheduler.start()
        tasks = [asyncio.create_task(scheduler.submit(request(1, 1.0))) for _ in range(2)]
        # Both gates are closed: the two requests can only run on the two instances at once.
        for instance in instances:
            await wait_started(instance)
        for instance in instances:
            instance.gate.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(scheduler.submit(request(1, 2.0)) for _ in range(3)))
        await scheduler.close()

    run(scenario)

    def executions(instance: str, device: str) -> float | None:
        labels = {"model": "m", "version": "1", "instance": instance, "device": device}
        return registry.get_sample_value("trtserve_instance_executions_total", labels)

    assert executions("0", "gpu:0") == len(instances[0].batch_sizes) >= 1
    assert executions("1", "gpu:1") == len(instances[1].batch_sizes) >= 1
    assert len(instances[0].batch_sizes) + len(instances[1].batch_sizes) == 5


def test_placements_must_match_the_instances() -> None:
    config = SchedulerConfig("m", "1", 0, BatchingSettings(False, (), 0), 10)
    metrics = ServerMetrics(CollectorRegistry()).version("m", "1")
    with pytest.raises(ValueError, match=r"expected one per instance \(1\), received 0"):
        ModelScheduler(config, [GatedDoubler()], [], metrics)


def test_a_lone_request_does_not_wait_for_company() -> None:
    instance = GatedDoubler()
    instance.gate.set()

    async def scenario() -> None:
        # A delay far longer than the test may take: only the idle fast path can answer.
        scheduler = make_scheduler(instance, delay_us=30_000_000)
        scheduler.start()
        await asyncio.wait_for(scheduler.submit(request(1, 1.0)), timeout=10)
        await scheduler.close()

    run(scenario)
    assert instance.batch_sizes == [1]


class Forgetful(ModelInstance):
    """A broken backend: it returns none of the outputs asked for."""

    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        return ExecutionResult({}, ExecutionTimings(1, 2, 3))

    def close(self) -> None:
        pass


def test_outputs_a_backend_did_not_return_fail_the_batch_and_the_thread_goes_on() -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(Forgetful())
        scheduler.start()
        for _ in range(2):
            with pytest.raises(Internal, match="execution failed: KeyError"):
                await asyncio.wait_for(scheduler.submit(request(1, 1.0)), timeout=10)
        await scheduler.close()

    run(scenario)
