"""Fast one-by-one models run a request on the event loop itself, when an instance is free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from trtserve.server.backends.base import (
    ExecutionResult,
    ExecutionTimings,
    ModelInstance,
    Placement,
)
from trtserve.server.errors import InvalidArgument
from trtserve.server.metrics import ServerMetrics
from trtserve.server.runtime.tensor_buffers import NO_TARGETS, InputArray, RowTarget
from trtserve.server.scheduler.batcher import ModelScheduler, SchedulerConfig
from trtserve.server.scheduler.request import InferenceRequest
from trtserve.server.specs import BatchingSettings, DeviceKind


class WhereItRan(ModelInstance):
    """Doubles `x`, noting the thread of each execution; fails when `x` is negative."""

    def __init__(self, compute_ns: int = 3) -> None:
        self.threads: list[str] = []
        # What the instance reports as its compute time per execution.
        self.compute_ns = compute_ns

    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        self.threads.append(threading.current_thread().name)
        x = np.asarray(inputs["x"])
        if (x < 0).any():
            raise InvalidArgument("negative input")
        return ExecutionResult({"y": x * 2}, ExecutionTimings(self.compute_ns, 0, 0))

    def close(self) -> None:
        pass


def scheduler(
    instance: ModelInstance, inline_us: int, batching: bool = False, max_batch_size: int = 0
) -> ModelScheduler:
    config = SchedulerConfig(
        "m", "1", max_batch_size, BatchingSettings(batching, (), 0), 16, inline_us
    )
    metrics = ServerMetrics(CollectorRegistry()).version("m", "1")
    return ModelScheduler(config, [instance], [Placement(DeviceKind.CPU)], metrics)


def request(value: float) -> InferenceRequest:
    return InferenceRequest({"x": np.full((1, 2), value, np.float32)}, ("y",), 1)


def run_requests(s: ModelScheduler, values: list[float]) -> list[object]:
    async def scenario() -> list[object]:
        s.start()
        outcomes: list[object] = []
        for value in values:
            try:
                outcomes.append((await s.submit(request(value))).outputs["y"])
            except InvalidArgument as error:
                outcomes.append(error)
        await s.close()
        return outcomes

    return asyncio.run(scenario())


def test_once_executions_are_known_fast_requests_run_on_the_loop() -> None:
    instance = WhereItRan()
    outcomes = run_requests(scheduler(instance, inline_us=10_000_000), [1.0, 2.0, 3.0])
    # The first execution's time is unknown: it runs on the instance's thread.
    assert instance.threads == ["m-0", "MainThread", "MainThread"]
    for out, value in zip(outcomes, [1.0, 2.0, 3.0], strict=True):
        np.testing.assert_array_equal(out, np.full((1, 2), 2 * value, np.float32))


@pytest.mark.parametrize(
    ("inline_us", "batching", "max_batch_size"),
    [(0, False, 0), (10_000_000, True, 8)],
    ids=["inline off", "dynamic batching"],
)
def test_requests_stay_on_the_threads(inline_us: int, batching: bool, max_batch_size: int) -> None:
    instance = WhereItRan()
    run_requests(scheduler(instance, inline_us, batching, max_batch_size), [1.0, 2.0, 3.0])
    assert instance.threads == ["m-0"] * 3


def test_a_model_slower_than_the_limit_stays_on_its_threads() -> None:
    instance = WhereItRan(compute_ns=2_000)
    s = scheduler(instance, inline_us=1)
    run_requests(s, [1.0, 2.0, 3.0])
    assert instance.threads == ["m-0"] * 3


def test_an_inline_failure_is_the_request_s_error_and_the_instance_is_free_again() -> None:
    instance = WhereItRan()
    released: list[str] = []
    s = scheduler(instance, inline_us=10_000_000)

    async def scenario() -> object:
        s.start()
        await s.submit(request(1.0))
        failing = request(-1.0)
        failing.on_release = lambda: released.append("failing")
        with pytest.raises(InvalidArgument, match="negative input"):
            await s.submit(failing)
        result = await s.submit(request(4.0))
        assert s.pending == 0
        await s.close()
        return result.outputs["y"]

    out = asyncio.run(scenario())
    np.testing.assert_array_equal(out, np.full((1, 2), 8.0, np.float32))
    assert released == ["failing"]
    assert instance.threads == ["m-0", "MainThread", "MainThread"]
