"""The scheduler with tensors passed by reference: releases, gathered inputs, placed outputs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from test_batcher import GatedDoubler, make_scheduler, request, run, wait_started

from trtserve.server.backends.base import ExecutionResult, ExecutionTimings, ModelInstance
from trtserve.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from trtserve.server.runtime.tensor_buffers import (
    NO_TARGETS,
    DeviceArray,
    GatheredArray,
    InputArray,
    OutputTarget,
    PlacedOutput,
    RowTarget,
)
from trtserve.server.scheduler.request import InferenceRequest


class Releases:
    """Counts each request's release calls, by label."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def track(self, req: InferenceRequest, label: str) -> InferenceRequest:
        def released() -> None:
            with self._lock:
                self.counts[label] = self.counts.get(label, 0) + 1

        req.on_release = released
        return req


def test_every_request_is_released_once_whichever_way_it_leaves() -> None:
    instance = GatedDoubler()
    releases = Releases()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, max_queue_size=2, batching=False)
        scheduler.start()
        executed = asyncio.create_task(
            scheduler.submit(releases.track(request(1, 1.0), "executed"))
        )
        await wait_started(instance)
        cancelled = asyncio.create_task(
            scheduler.submit(releases.track(request(1, 2.0), "cancelled"))
        )
        expired = asyncio.create_task(
            scheduler.submit(
                releases.track(request(1, 3.0, deadline=time.monotonic() - 1), "expired")
            )
        )
        while scheduler.pending < 3:
            await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted):
            await scheduler.submit(releases.track(request(1, 4.0), "refused"))
        cancelled.cancel()
        instance.gate.set()
        await executed
        with pytest.raises(DeadlineExceeded):
            await expired
        await scheduler.close()
        with pytest.raises(Unavailable):
            await scheduler.submit(releases.track(request(1, 5.0), "closed"))

    run(scenario)
    assert releases.counts == {
        "executed": 1,
        "cancelled": 1,
        "expired": 1,
        "refused": 1,
        "closed": 1,
    }


def test_requests_dropped_by_a_closing_scheduler_are_released() -> None:
    instance = GatedDoubler()
    releases = Releases()

    async def scenario() -> None:
        scheduler = make_scheduler(instance, batching=False)
        scheduler.start()
        running = asyncio.create_task(scheduler.submit(releases.track(request(1, 1.0), "run")))
        await wait_started(instance)
        queued = asyncio.create_task(scheduler.submit(releases.track(request(1, 2.0), "drop")))
        while scheduler.pending < 2:
            await asyncio.sleep(0)
        closing = asyncio.create_task(scheduler.close(drain=False))
        with pytest.raises(Unavailable):
            await queued
        instance.gate.set()
        await running
        await closing

    run(scenario)
    assert releases.counts == {"run": 1, "drop": 1}


class Recorder(ModelInstance):
    """Records what it is given; places `y` into host targets when asked to."""

    def __init__(self, place: bool) -> None:
        self.place = place
        self.inputs: list[Mapping[str, InputArray]] = []
        self.targets: list[Mapping[str, Sequence[RowTarget]]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        self.started.set()
        assert self.gate.wait(10), "test never opened the gate"
        self.inputs.append(dict(inputs))
        self.targets.append(dict(targets))
        rows = int(inputs["x"].shape[0])
        y = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        if not self.place or "y" not in targets:
            return ExecutionResult({"y": y}, ExecutionTimings(1, 1, 1))
        for row_target in targets["y"]:
            assert row_target.rows is not None and row_target.target.host is not None
            part = y[row_target.first_row : row_target.first_row + row_target.rows]
            row_target.target.host[: part.nbytes] = part.reshape(-1).view(np.uint8)
        whole_batch_targeted = sum(t.rows or 0 for t in targets["y"]) == rows
        value: np.ndarray | PlacedOutput = (
            PlacedOutput(y.dtype, y.shape) if whole_batch_targeted else y
        )
        return ExecutionResult({"y": value}, ExecutionTimings(1, 1, 1), frozenset({"y"}))

    def close(self) -> None:
        pass


def device_request(rows: int, address: int) -> InferenceRequest:
    x = DeviceArray(0, address, np.dtype(np.float32), (rows, 4))
    return InferenceRequest({"x": x}, ("y",), rows)


def host_target(rows: int) -> tuple[OutputTarget, np.ndarray]:
    memory = np.zeros(rows * 16, dtype=np.uint8)
    return OutputTarget("region", memory.nbytes, host=memory), memory


async def batch_of(
    instance: Recorder, requests: list[InferenceRequest]
) -> list[dict[str, np.ndarray | PlacedOutput]]:
    """Run `requests` as one batch behind a first request that holds the instance."""
    scheduler = make_scheduler(instance)
    scheduler.start()
    first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
    assert await asyncio.to_thread(instance.started.wait, 10)
    rest = [asyncio.create_task(scheduler.submit(r)) for r in requests]
    while scheduler.pending < 1 + len(requests):
        await asyncio.sleep(0)
    instance.gate.set()
    await first
    responses = await asyncio.gather(*rest)
    await scheduler.close()
    return [r.outputs for r in responses]


def test_a_batch_with_gpu_inputs_reaches_the_backend_as_parts_in_order() -> None:
    instance = Recorder(place=False)
    host = np.ones((2, 4), dtype=np.float32)
    requests = [
        device_request(1, 0x1000),
        InferenceRequest({"x": host}, ("y",), 2),
        device_request(3, 0x2000),
    ]
    outputs = run(lambda: batch_of(instance, requests))
    gathered = instance.inputs[1]["x"]
    assert isinstance(gathered, GatheredArray)
    assert gathered.shape == (6, 4) and gathered.nbytes == 6 * 16
    assert [getattr(p, "address", None) for p in gathered.parts] == [0x1000, None, 0x2000]
    assert gathered.parts[1] is host
    # Each request gets its own rows back.
    assert [o["y"].shape for o in outputs] == [(1, 4), (2, 4), (3, 4)]
    np.testing.assert_array_equal(outputs[2]["y"], np.arange(12, 24).reshape(3, 4))


def test_outputs_placed_for_every_request_come_back_as_their_rows_shape() -> None:
    instance = Recorder(place=True)
    (t1, m1), (t2, m2) = host_target(1), host_target(3)
    requests = [request(1, 1.0), request(3, 2.0)]
    requests[0].output_targets = {"y": t1}
    requests[1].output_targets = {"y": t2}
    outputs = run(lambda: batch_of(instance, requests))
    assert instance.targets[1]["y"] == [RowTarget(0, 1, t1), RowTarget(1, 3, t2)]
    assert outputs == [
        {"y": PlacedOutput(np.dtype(np.float32), (1, 4))},
        {"y": PlacedOutput(np.dtype(np.float32), (3, 4))},
    ]
    np.testing.assert_array_equal(m1.view(np.float32), np.arange(4))
    np.testing.assert_array_equal(m2.view(np.float32), np.arange(4, 16))


def test_a_request_without_a_target_gets_its_rows_when_another_was_placed() -> None:
    instance = Recorder(place=True)
    target, memory = host_target(2)
    requests = [request(2, 1.0), request(1, 2.0)]
    requests[0].output_targets = {"y": target}
    outputs = run(lambda: batch_of(instance, requests))
    assert outputs[0]["y"] == PlacedOutput(np.dtype(np.float32), (2, 4))
    np.testing.assert_array_equal(memory.view(np.float32), np.arange(8))
    untargeted = outputs[1]["y"]
    assert isinstance(untargeted, np.ndarray)
    np.testing.assert_array_equal(untargeted, np.arange(8, 12).reshape(1, 4))


def test_outputs_a_backend_returned_are_written_into_their_targets_on_its_thread() -> None:
    instance = Recorder(place=False)
    target, memory = host_target(3)
    small = OutputTarget("tiny", 8, host=np.zeros(8, dtype=np.uint8))
    requests = [request(3, 1.0), request(1, 2.0), request(1, 3.0)]
    requests[0].output_targets = {"y": target}
    requests[1].output_targets = {"y": small}

    async def scenario() -> list[object]:
        scheduler = make_scheduler(instance)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(request(1, 0.0)))
        assert await asyncio.to_thread(instance.started.wait, 10)
        rest = [asyncio.create_task(scheduler.submit(r)) for r in requests]
        while scheduler.pending < 4:
            await asyncio.sleep(0)
        instance.gate.set()
        await first
        outcomes = await asyncio.gather(*rest, return_exceptions=True)
        await scheduler.close()
        return list(outcomes)

    placed, too_small, plain = run(scenario)
    assert placed.outputs == {"y": PlacedOutput(np.dtype(np.float32), (3, 4))}
    np.testing.assert_array_equal(memory.view(np.float32), np.arange(12))
    # One request's output region too small fails that request only.
    assert isinstance(too_small, InvalidArgument)
    assert "'tiny' has room for 8 bytes" in str(too_small) and "needs 16" in str(too_small)
    np.testing.assert_array_equal(plain.outputs["y"], np.arange(16, 20).reshape(1, 4))
