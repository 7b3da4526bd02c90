"""One TensorRT execution context with its own CUDA stream, events and buffers on one device."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trtserve.server.backends.base import (
    ExecutionResult,
    ExecutionTimings,
    ModelInstance,
    Placement,
)
from trtserve.server.backends.tensorrt_bindings import (
    Copy,
    CopyKind,
    InputPlan,
    OutputPlan,
    OwnBuffers,
    plan_input,
    plan_output,
)
from trtserve.server.backends.tensorrt_memory import (
    InstanceMemory,
    StagingBuffers,
    attempt,
    host_view,
    stage,
)
from trtserve.server.backends.tensorrt_output_pool import LentBuffer, OutputPool
from trtserve.server.backends.tensorrt_tensors import EngineTensor, profile_bounds
from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from trtserve.server.runtime.cuda_device import CudaError, cuda_call, require_cudart, use_device
from trtserve.server.runtime.host_pinning import PINNED
from trtserve.server.runtime.tensor_buffers import (
    NO_TARGETS,
    GatheredArray,
    InputArray,
    PlacedOutput,
    RowTarget,
)
from trtserve.server.runtime.trt_logger import RECORDER


class TensorRTInstance(ModelInstance):
    """One execution context with its own stream and buffers on one device."""

    def __init__(
        self,
        model: str,
        engine: Any,
        tensors: Sequence[EngineTensor],
        placement: Placement,
        *,
        blocking_wait: bool = False,
    ) -> None:
        """`blocking_wait`: wait for the GPU on an event that puts the thread to sleep, not
        by spinning on the stream (CUDA's default for few contexts)."""
        self._rt = require_cudart()
        self._blocking_wait = blocking_wait
        self._model = model
        self._engine: Any = engine
        self._tensors = {t.name: t for t in tensors}
        self._inputs = [t for t in tensors if t.is_input]
        self._device = placement.device_id
        self._closed = False
        self._buffers = StagingBuffers()
        self._own: dict[str, OwnBuffers] = {}
        self._pools: dict[str, OutputPool] = {}
        kind = self._rt.cudaMemcpyKind
        self._kinds = {
            CopyKind.HOST_TO_DEVICE: kind.cudaMemcpyHostToDevice,
            CopyKind.DEVICE_TO_HOST: kind.cudaMemcpyDeviceToHost,
            # The source may be on another device: unified addressing finds both ends.
            CopyKind.DEVICE_TO_DEVICE: kind.cudaMemcpyDefault,
        }
        self._events: list[Any] = []
        self._stream: Any = None
        self._context: Any = None
        num_profiles = max(1, int(engine.num_optimization_profiles))
        # Each instance starts on its own profile, so instances rarely share one.
        self._home_profile = placement.index % num_profiles
        # A new context uses profile 0; engines with several profiles get one set explicitly.
        self._profile = 0
        self._profile_set = num_profiles == 1
        self._bounds = [
            {t.name: profile_bounds(engine, t, p) for t in self._inputs}
            for p in range(num_profiles)
        ]
        with use_device(self._device):
            try:
                self._create()
            except BaseException:
                with contextlib.suppress(CudaError):
                    self._release()
                raise

    def _create(self) -> None:
        rt = self._rt
        self._stream = cuda_call(
            "cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags, rt.cudaStreamNonBlocking
        )
        flags = rt.cudaEventBlockingSync if self._blocking_wait else rt.cudaEventDefault
        self._events = [
            cuda_call("cudaEventCreateWithFlags", rt.cudaEventCreateWithFlags, flags)
            for _ in range(4)
        ]
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ResourceExhausted(
                f"model '{self._model}': TensorRT could not create an execution context on "
                f"device {self._device} (out of GPU memory?)"
            )
        self._buffers.allocate(rt, self._max_bytes())
        self._own = {
            name: OwnBuffers(address, self._buffers.host[name])
            for name, address in self._buffers.device.items()
        }
        self._pools = {
            t.name: OutputPool(rt, self._buffers.capacity[t.name])
            for t in self._tensors.values()
            if not t.is_input
        }
        self._switch_profile(self._home_profile)

    def _max_bytes(self) -> dict[str, int]:
        """Bytes of every tensor at the largest shapes of all profiles."""
        sizes: dict[str, int] = {}
        for profile, bounds in enumerate(self._bounds):
            self._switch_profile(profile)
            for name, (_low, high) in bounds.items():
                self._set_input_shape(name, high)
            for name, tensor in self._tensors.items():
                shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise FailedPrecondition(
                        f"model '{self._model}': output '{name}' has a data-dependent shape "
                        f"{shape}, which this server does not support"
                    )
                nbytes = math.prod(shape) * tensor.dtype.itemsize
                sizes[name] = max(sizes.get(name, 0), nbytes)
        return sizes

    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        if self._closed:
            raise Unavailable(f"model '{self._model}': the instance is closed")
        with use_device(self._device):
            started = time.perf_counter_ns()
            arrays = self._checked_inputs(inputs)
            self._choose_profile({n: tuple(a.shape) for n, a in arrays.items()})
            for name, array in arrays.items():
                self._set_input_shape(name, array.shape)
            # Output shapes follow from the input shapes: every target is checked for room
            # before any copy touches client memory.
            outputs, lent = self._plan_outputs(output_names, targets)
            pinned = None if PINNED.empty() else PINNED.contains
            plans = {
                name: plan_input(name, array, self._device, self._own[name], pinned)
                for name, array in arrays.items()
            }
            for plan in plans.values():
                for step in plan.stages:
                    stage(step.array, step.dst)
            staged = time.perf_counter_ns()
            try:
                self._enqueue(plans, outputs)
                self._wait()
            except BaseException:
                # Copies in flight may read or write client memory: none may outlive the call.
                with contextlib.suppress(CudaError):
                    self._sync()
                raise
            synced = time.perf_counter_ns()
            collected = self._collect(outputs, lent)
            done = time.perf_counter_ns()
            h2d, infer, d2h = self._event_times()
        # GPU work is timed by CUDA events; host staging by the clock.
        return ExecutionResult(
            collected,
            ExecutionTimings(
                compute_input_ns=(staged - started) + h2d,
                compute_infer_ns=infer,
                compute_output_ns=d2h + (done - synced),
            ),
            placed=frozenset(name for name, plan in outputs.items() if plan.placed),
        )

    def memory(self) -> InstanceMemory:
        """The instance's stream and buffers (what a placement check inspects)."""
        return InstanceMemory(
            self._device,
            int(self._stream),
            dict(self._buffers.device),
            dict(self._buffers.host),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with use_device(self._device):
            self._release()

    def _checked_inputs(self, inputs: Mapping[str, InputArray]) -> dict[str, InputArray]:
        arrays = {}
        for tensor in self._inputs:
            array = inputs.get(tensor.name)
            if array is None:
                raise InvalidArgument(f"model '{self._model}': input '{tensor.name}' is missing")
            parts = array.parts if isinstance(array, GatheredArray) else (array,)
            for part in parts:
                if part.dtype != tensor.dtype:
                    raise InvalidArgument(
                        f"model '{self._model}': input '{tensor.name}': expected datatype "
                        f"{tensor.datatype}, received numpy {part.dtype}"
                    )
            if array.nbytes > self._buffers.capacity[tensor.name]:
                raise InvalidArgument(
                    f"model '{self._model}': input '{tensor.name}': shape {list(array.shape)} "
                    f"is larger than the engine's largest profile shape"
                )
            arrays[tensor.name] = array
        return arrays

    def _choose_profile(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        if _fits(self._bounds[self._profile], shapes):
            return
        order = [self._home_profile, *range(len(self._bounds))]
        for profile in order:
            if _fits(self._bounds[profile], shapes):
                self._switch_profile(profile)
                return
        ranges = "; ".join(
            ", ".join(f"'{n}' {list(lo)}..{list(hi)}" for n, (lo, hi) in b.items())
            for b in self._bounds
        )
        got = ", ".join(f"'{n}' {list(s)}" for n, s in shapes.items())
        raise InvalidArgument(
            f"model '{self._model}': input shapes {got} fit no optimization profile "
            f"(profiles: {ranges})"
        )

    def _switch_profile(self, profile: int) -> None:
        if profile == self._profile and self._profile_set:
            return
        ok = self._context.set_optimization_profile_async(profile, int(self._stream))
        if not ok:
            raise FailedPrecondition(
                f"model '{self._model}': TensorRT refused optimization profile {profile}"
            )
        # The switch may enqueue copies; later host-side shape calls must see it done.
        self._sync()
        self._profile = profile
        self._profile_set = True

    def _plan_outputs(
        self, output_names: Sequence[str], targets: Mapping[str, Sequence[RowTarget]]
    ) -> tuple[dict[str, OutputPlan], dict[str, LentBuffer]]:
        """Each output's plan, and the pooled buffers that outputs coming back are copied into."""
        plans, lent = {}, {}
        for name in output_names:
            tensor = self._tensors.get(name)
            if tensor is None or tensor.is_input:
                raise InvalidArgument(f"model '{self._model}': no output named '{name}'")
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            own = self._own[name]
            rows = targets.get(name, ())
            buffer = None if rows else self._pools[name].lend()
            if buffer is not None:
                own = OwnBuffers(own.device, buffer.address)
                lent[name] = buffer
            plans[name] = plan_output(name, tensor.dtype, shape, rows, self._device, own)
        return plans, lent

    def _enqueue(self, inputs: Mapping[str, InputPlan], outputs: Mapping[str, OutputPlan]) -> None:
        """Input copies, the engine, output copies, all on the stream, between four events."""
        mark = RECORDER.mark()
        self._record(0)
        for filled in inputs.values():
            self._issue(filled.copies)
        # Every tensor is bound on every call: TensorRT keeps the last address it was given,
        # which may be a client's memory from the call before.
        for name, own in self._buffers.device.items():
            if name in inputs:
                address = inputs[name].address
            elif name in outputs:
                address = outputs[name].address
            else:
                address = own
            if not self._context.set_tensor_address(name, address):
                raise FailedPrecondition(
                    f"model '{self._model}': TensorRT refused the address of tensor '{name}'"
                )
        self._record(1)
        if not self._context.execute_async_v3(int(self._stream)):
            raise FailedPrecondition(
                f"model '{self._model}': TensorRT execute_async_v3 failed: "
                + ("; ".join(RECORDER.errors_since(mark)) or "no message")
            )
        self._record(2)
        for written in outputs.values():
            self._issue(written.copies)
        self._record(3)

    def _collect(
        self, plans: Mapping[str, OutputPlan], lent: Mapping[str, LentBuffer]
    ) -> dict[str, np.ndarray | PlacedOutput]:
        outputs: dict[str, np.ndarray | PlacedOutput] = {}
        for name, plan in plans.items():
            if not plan.returned:
                outputs[name] = PlacedOutput(plan.dtype, plan.shape)
                continue
            if name in lent:
                # The output was copied into a buffer of its own: handed on without a copy.
                outputs[name] = lent[name].array(plan.dtype, plan.shape)
                continue
            nbytes = math.prod(plan.shape) * plan.dtype.itemsize
            view = host_view(self._buffers.host[name], nbytes)
            outputs[name] = view.view(plan.dtype).reshape(plan.shape).copy()
        return outputs

    def _set_input_shape(self, name: str, shape: Sequence[int]) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            low, high = self._bounds[self._profile][name]
            raise InvalidArgument(
                f"model '{self._model}': input '{name}': shape {list(shape)} is outside "
                f"optimization profile {self._profile} ({list(low)}..{list(high)})"
            )

    def _issue(self, copies: Sequence[Copy]) -> None:
        for copy in copies:
            if copy.nbytes == 0:
                continue
            cuda_call(
                f"cudaMemcpyAsync {copy.kind.value} of {copy.what}",
                self._rt.cudaMemcpyAsync,
                copy.dst,
                copy.src,
                copy.nbytes,
                self._kinds[copy.kind],
                self._stream,
            )

    def _record(self, index: int) -> None:
        cuda_call("cudaEventRecord", self._rt.cudaEventRecord, self._events[index], self._stream)

    def _wait(self) -> None:
        """Wait for everything `_enqueue` put on the stream (it ends with event 3)."""
        if self._blocking_wait:
            cuda_call("cudaEventSynchronize", self._rt.cudaEventSynchronize, self._events[3])
        else:
            self._sync()

    def _sync(self) -> None:
        cuda_call("cudaStreamSynchronize", self._rt.cudaStreamSynchronize, self._stream)

    def _event_times(self) -> tuple[int, int, int]:
        """Nanoseconds of the H2D copies, the engine and the D2H copies, from CUDA events."""
        rt = self._rt
        times = []
        for start, end in ((0, 1), (1, 2), (2, 3)):
            ms = cuda_call(
                "cudaEventElapsedTime",
                rt.cudaEventElapsedTime,
                self._events[start],
                self._events[end],
            )
            times.append(int(float(ms) * 1e6))
        return times[0], times[1], times[2]

    def _release(self) -> None:
        """Free what _create made, the context before its engine; raise the first failure.

        Every step runs even after a failure, so one bad call leaks nothing else.
        """
        rt = self._rt
        errors: list[CudaError] = []
        if self._stream is not None:
            attempt(errors, "cudaStreamSynchronize", rt.cudaStreamSynchronize, self._stream)
        self._context = None
        for pool in self._pools.values():
            pool.close()
        self._buffers.free(rt, errors)
        for event in self._events:
            attempt(errors, "cudaEventDestroy", rt.cudaEventDestroy, event)
        self._events = []
        if self._stream is not None:
            attempt(errors, "cudaStreamDestroy", rt.cudaStreamDestroy, self._stream)
            self._stream = None
        self._engine = None
        if errors:
            raise errors[0]


def _fits(
    bounds: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
    shapes: Mapping[str, tuple[int, ...]],
) -> bool:
    for name, (low, high) in bounds.items():
        shape = shapes[name]
        if len(shape) != len(low):
            return False
        if any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)):
            return False
    return True
