"""A request whose caller went away keeps its regions until the backend is done with them.

The data plane's call ends at once when the client cancels, but the request may already be
executing on an instance thread that reads the region; unmapping it then would let the
backend read freed memory. Here a gated instance holds the request while its caller is
cancelled and the region is unregistered.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from trtserve.server.app import request_limits
from trtserve.server.backends.base import (
    ExecutionResult,
    ExecutionTimings,
    ModelInstance,
    Placement,
)
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.dataplane.serving_state import ServingState
from trtserve.server.dataplane.shared_memory import (
    Lease,
    RegionKind,
    SharedMemoryLimits,
    SharedMemoryRegistry,
)
from trtserve.server.dataplane.system_region import SystemRegion
from trtserve.server.dataplane.tensor_references import TensorReference, input_array
from trtserve.server.metrics import ServerMetrics
from trtserve.server.runtime.tensor_buffers import NO_TARGETS, InputArray, RowTarget
from trtserve.server.scheduler.batcher import ModelScheduler, SchedulerConfig
from trtserve.server.scheduler.request import InferenceRequest
from trtserve.server.settings import ServerSettings
from trtserve.server.specs import BatchingSettings, DeviceKind

SHM = Path("/dev/shm")
NBYTES = 16


@pytest.fixture()
def shm_key() -> Iterator[str]:
    name = f"trtserve-test-lease-{os.getpid()}"
    path = SHM / name
    path.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    yield "/" + name
    path.unlink(missing_ok=True)


class Prepared:
    """A checked request of one FP32 [1, 4] input passed by reference to region 'r'."""

    per_element = 0
    inline_bytes = 0
    regions: ClassVar[dict[str, str]] = {"r": "input 'x'"}
    input_references = (TensorReference("r", 0, NBYTES),)

    def decode(self, lease: Lease | None) -> InferenceRequest:
        assert lease is not None
        x = input_array(lease, "x", self.input_references[0], "FP32", [1, 4])
        return InferenceRequest({"x": x}, ("y",), 1)


class Gated(ModelInstance):
    """Returns `x` as `y` once the test opens the gate."""

    def __init__(self) -> None:
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
        return ExecutionResult({"y": np.array(inputs["x"])}, ExecutionTimings(1, 1, 1))

    def close(self) -> None:
        pass


def scheduler_of(instance: ModelInstance) -> ModelScheduler:
    config = SchedulerConfig("m", "1", 8, BatchingSettings(True, (), 0), 16)
    metrics = ServerMetrics(CollectorRegistry()).version("m", "1")
    return ModelScheduler(config, [instance], [Placement(DeviceKind.CPU)], metrics)


def plane_serving(model: Any, registry: SharedMemoryRegistry) -> DataPlane:
    manager = SimpleNamespace(get=lambda name, version: model)
    return DataPlane(
        manager,  # type: ignore[arg-type]
        ServerMetrics(CollectorRegistry()),
        ServingState(),
        "test",
        request_limits(ServerSettings()),
        registry,
        0,
    )


def test_unregister_waits_for_a_cancelled_request_still_executing(shm_key: str) -> None:
    instance = Gated()
    registry = SharedMemoryRegistry(SharedMemoryLimits(4, 1 << 20), lambda: 0)

    async def scenario() -> None:
        scheduler = scheduler_of(instance)
        scheduler.start()
        model = SimpleNamespace(
            name="m",
            version=1,
            scheduler=scheduler,
            loaded=SimpleNamespace(device_tensors=False),
            metrics=SimpleNamespace(record_request=lambda *args: None),
            outputs={},
        )
        plane = plane_serving(model, registry)
        await registry.register_system("r", shm_key, 0, NBYTES)
        entry = registry._entries["r"]
        region = entry.region
        assert isinstance(region, SystemRegion)

        call = asyncio.create_task(
            plane.infer("m", "", lambda m: Prepared(), lambda m, response: response)
        )
        assert await asyncio.to_thread(instance.started.wait, 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The caller is gone; the request still executes and holds the region.
        assert entry.leases == 1
        unregistering = asyncio.create_task(plane.unregister_region(RegionKind.SYSTEM, "r"))
        while registry.status(RegionKind.SYSTEM, ""):
            await asyncio.sleep(0)
        assert not entry.closed.is_set() and not region._map.closed
        instance.gate.set()
        await scheduler.close()
        await unregistering
        assert entry.leases == 0 and entry.closed.is_set()

    asyncio.run(scenario())
