"""Where a request's time goes inside the server, below gRPC, with the real plan on a GPU.

    python benchmarks/tensorrt_overhead.py --plans .gpu/plans [--iterations 3000]

Times, per call, each layer a CUDA shared-memory request passes through, in this process:
(1) TensorRT alone: addresses bound once, `execute_async_v3` and a stream sync per call;
(2) `TensorRTInstance.execute` with the input and output in GPU memory (DeviceArray in,
    device OutputTarget out), as a request by reference reaches it;
(3) the same with host arrays (the inline path's backend work: H2D, execute, D2H);
(4) `ModelScheduler.submit` from 8 asyncio tasks over 2 instances, what the data plane awaits.
Prints microseconds per call and calls per second; CPU seconds per call of this process too,
since Python work (under one interpreter lock) is what caps a Python server.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from trtserve.server.backends.base import ModelInstance, Placement
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.metrics import ServerMetrics
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    DeviceMemory,
    OutputTarget,
    RowTarget,
)
from trtserve.server.scheduler.batcher import ModelScheduler, SchedulerConfig
from trtserve.server.scheduler.request import InferenceRequest
from trtserve.server.specs import BatchingSettings, DeviceKind, InstanceGroup, ModelSettings

PLAN = "conv_relu_trt11.0.0.114.plan"
IN_SHAPE = (1, 3, 224, 224)
OUT_SHAPE = (1, 16, 222, 222)
F32 = np.dtype(np.float32)


def timed(label: str, calls: int, run: Callable[[], object]) -> dict[str, float]:
    """Run `run` `calls` times; wall and CPU microseconds per call."""
    run()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"us_per_call": wall / calls * 1e6, "cpu_us_per_call": cpu / calls * 1e6}
    print(
        f"{label:58s} {row['us_per_call']:8.1f} us/call  {calls / wall:9,.0f}/s  "
        f"cpu {row['cpu_us_per_call']:7.1f} us/call",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args(argv)
    from cuda.bindings import runtime as rt

    def ok(result: Any) -> int:
        err = result[0] if isinstance(result, tuple) else result
        assert int(err) == 0, f"CUDA error {err}"
        return int(result[1]) if isinstance(result, tuple) and len(result) > 1 else 0

    settings = ModelSettings(
        name="conv",
        platform="tensorrt_plan",
        instance_groups=(InstanceGroup(2, DeviceKind.GPU, (0,)),),
    )
    model = TensorRTBackend(store=LeanStore()).load(args.plans / PLAN, settings)
    instances: list[ModelInstance] = [
        model.create_instance(Placement(DeviceKind.GPU, 0, i)) for i in range(2)
    ]
    in_bytes, out_bytes = math.prod(IN_SHAPE) * 4, math.prod(OUT_SHAPE) * 4
    ok(rt.cudaSetDevice(0))
    inputs = [ok(rt.cudaMalloc(in_bytes)) for _ in range(8)]
    outputs = [ok(rt.cudaMalloc(out_bytes)) for _ in range(8)]
    x = np.random.default_rng(0).standard_normal(IN_SHAPE).astype(np.float32)
    n = args.iterations

    def by_reference(slot: int) -> tuple[dict[str, DeviceArray], dict[str, list[RowTarget]]]:
        target = OutputTarget("r", out_bytes, device=DeviceMemory(0, outputs[slot], out_bytes))
        return (
            {"x": DeviceArray(0, inputs[slot], F32, IN_SHAPE)},
            {"output0": [RowTarget(0, None, target)]},
        )

    # (1) TensorRT alone, through the instance's own context and stream.
    instance = instances[0]
    context, stream = instance._context, instance._stream  # type: ignore[attr-defined]
    context.set_input_shape("x", IN_SHAPE)
    context.set_tensor_address("x", inputs[0])
    context.set_tensor_address("output0", outputs[0])

    def bare() -> None:
        context.execute_async_v3(int(stream))
        ok(rt.cudaStreamSynchronize(stream))

    timed("(1) TensorRT alone: execute_async_v3 + sync", n, bare)
    ref_inputs, ref_targets = by_reference(0)
    timed(
        "(2) TensorRTInstance.execute, GPU in and out (by reference)",
        n,
        lambda: instance.execute(ref_inputs, ["output0"], ref_targets),
    )
    timed(
        "(3) TensorRTInstance.execute, host in and out (inline)",
        n // 3,
        lambda: instance.execute({"x": x}, ["output0"]),
    )

    config = SchedulerConfig("conv", "1", 0, BatchingSettings(False, (), 0), 1024)
    metrics = ServerMetrics(CollectorRegistry()).version("conv", "1")
    placements = [Placement(DeviceKind.GPU, 0, i) for i in range(2)]

    async def through_scheduler(concurrency: int) -> None:
        scheduler = ModelScheduler(config, instances, placements, metrics)
        scheduler.start()
        per_task = n // concurrency

        async def client(slot: int) -> None:
            for _ in range(per_task):
                ins, targets = by_reference(slot)
                request = InferenceRequest(dict(ins), ("output0",), 1)
                request.output_targets = {"output0": targets["output0"][0].target}
                await scheduler.submit(request)

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        calls = per_task * concurrency
        print(
            f"{f'(4) ModelScheduler.submit, {concurrency} tasks, 2 instances':58s} "
            f"{wall / calls * 1e6:8.1f} us/call  {calls / wall:9,.0f}/s  "
            f"cpu {cpu / calls * 1e6:7.1f} us/call",
            flush=True,
        )
        await scheduler.close()

    asyncio.run(through_scheduler(1))
    asyncio.run(through_scheduler(8))
    for instance in instances:
        instance.close()
    model.close()
    for address in inputs + outputs:
        ok(rt.cudaFree(address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
