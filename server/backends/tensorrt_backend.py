"""TensorRT version-compatible plans on NVIDIA GPUs.

Loading reads the plan header, routes the plan to the lean runtime of exactly its version (or,
for a trusted plan with an embedded lean runtime, to the dispatch runtime), deserializes it
and reads its tensors from the engine. An engine is bound to the device that was current when
it was deserialized, so the model keeps one engine per device its instances use. Each instance
has its own execution context, CUDA stream, device buffers sized for the largest shapes of the
engine's optimization profiles, and pinned host staging buffers.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from trtserve.protocol import datatypes
from trtserve.server.backends.base import (
    Backend,
    ExecutionResult,
    ExecutionTimings,
    LoadedModel,
    ModelInstance,
    Placement,
)
from trtserve.server.backends.tensorrt_probe import probe_plan
from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServerError,
    Unavailable,
)
from trtserve.server.runtime.cuda_device import (
    CudaError,
    cuda_call,
    cuda_device_count,
    require_cudart,
    require_device,
    use_device,
)
from trtserve.server.runtime.lean_cache import (
    DISPATCH_MODULE,
    LeanCache,
    LeanRuntimeLease,
    process_lean_cache,
)
from trtserve.server.runtime.lean_store import LeanStore, install_command
from trtserve.server.runtime.plan_header import (
    PlanHeader,
    PlanHeaderError,
    TrtVersion,
    read_plan_header,
)
from trtserve.server.runtime.routing import Route, RouteKind, route_plan
from trtserve.server.runtime.trt_logger import RECORDER
from trtserve.server.runtime.trust import TrustDecision, TrustPolicy, read_signature_file
from trtserve.server.specs import DeviceKind, ModelIO, ModelSettings, TensorSpec

PLATFORM = "tensorrt_plan"

# TensorRT DataType names -> v2 datatypes. FP8, INT4 and FP4 have no v2 equivalent.
TRT_TO_V2 = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor of an engine."""

    name: str
    is_input: bool
    datatype: str
    dtype: np.dtype
    # -1 for dynamic dimensions.
    shape: tuple[int, ...]


@dataclass(frozen=True)
class InstanceMemory:
    """Where one instance's CUDA objects live: its device, stream and buffer addresses."""

    device_id: int
    stream: int
    # Tensor name -> address, on the device and in pinned host memory.
    device_buffers: Mapping[str, int]
    host_buffers: Mapping[str, int]


class TensorRTBackend(Backend):
    """Loads `tensorrt_plan` models through the process's dispatch and lean runtimes."""

    platform = PLATFORM
    default_filename = "model.plan"

    def __init__(
        self,
        store: LeanStore | None = None,
        trust: TrustPolicy | None = None,
        runtimes: LeanCache | None = None,
        *,
        auto_install: bool = False,
        cuda_major: int = 13,
        probe_plans: bool = True,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`auto_install` installs a missing lean runtime version on first need (pip);
        `probe_plans` deserializes each plan in a child process first (see tensorrt_probe);
        the lean runtimes' metrics are registered on `registry` when given."""
        self.store = store if store is not None else LeanStore()
        self.trust = trust if trust is not None else TrustPolicy()
        self._runtimes = runtimes
        self.auto_install = auto_install
        self.cuda_major = cuda_major
        self.probe_plans = probe_plans
        self._preloaded: list[LeanRuntimeLease] = []
        if registry is not None:
            registry.register(self.runtimes.metrics)

    @property
    def runtimes(self) -> LeanCache:
        if self._runtimes is None:
            self._runtimes = process_lean_cache()
        return self._runtimes

    def available(self) -> tuple[bool, str]:
        if cuda_device_count() <= 0:
            return False, (
                "no CUDA device is visible (no GPU, NVIDIA driver or cuda-bindings package), "
                "so TensorRT plans cannot be served here"
            )
        if importlib.util.find_spec(DISPATCH_MODULE) is None:
            return False, (
                f"the {DISPATCH_MODULE} package is not installed (pip install 'trtserve[tensorrt]')"
            )
        return True, ""

    def preload(self, versions: Sequence[str]) -> list[str]:
        """Load lean runtimes before any plan needs them and hold them until `close`.

        A warm cache makes the first model load of each version fast; the versions must be
        installed in the store.
        """
        ok, why = self.available()
        if not ok:
            raise Unavailable(f"cannot preload TensorRT lean runtimes: {why}")
        loaded: list[str] = []
        for text in versions:
            version = TrtVersion.parse(text)
            library = self.store.path_for(version)
            if library is None:
                raise Unavailable(
                    f"preload_runtimes: lean runtime {version} is not installed in "
                    f"{self.store.root}; run `{install_command(version)}`"
                )
            self._preloaded.append(self.runtimes.acquire(version, library))
            loaded.append(str(version))
        return loaded

    def close(self) -> None:
        """Release the preloaded lean runtimes (after every model is closed)."""
        leases, self._preloaded = self._preloaded, []
        for lease in leases:
            lease.release()

    def load(self, path: Path, settings: ModelSettings) -> LoadedModel:
        name = settings.name
        # The header is read first: a damaged plan gets its precise message even on a machine
        # without a GPU.
        plan = _read_plan(path, name)
        header = _read_header(plan, path, name)
        ok, why = self.available()
        if not ok:
            raise Unavailable(f"model '{name}': {why}")
        route = self._route(header, plan, path, name)
        device = _first_gpu(settings)
        require_device(device)
        if self.probe_plans:
            try:
                probe_plan(path, route.library, device)
            except ServerError as e:
                raise _prefixed(e, name) from None
        lease = None
        try:
            if route.kind is RouteKind.LEAN:
                assert route.library is not None
                lease = self.runtimes.acquire(route.version, route.library)
            return TensorRTModel(name, path, plan, route, lease, self.runtimes, device)
        except ServerError as e:
            if lease is not None:
                lease.release()
            raise _prefixed(e, name) from None
        except BaseException:
            if lease is not None:
                lease.release()
            raise

    def _route(self, header: PlanHeader, plan: bytes, path: Path, name: str) -> Route:
        decision: TrustDecision | None = None
        if header.has_lean_runtime:
            decision = self.trust.check(plan, read_signature_file(path))
        try:
            return route_plan(header, self.store, decision)
        except Unavailable as e:
            if not self.auto_install or header.has_lean_runtime:
                raise _prefixed(e, name) from None
        except ServerError as e:
            raise _prefixed(e, name) from None
        try:
            self.store.install(header.version, self.cuda_major, progress=False)
            return route_plan(header, self.store, decision)
        except ServerError as e:
            raise _prefixed(e, name) from None


class TensorRTModel(LoadedModel):
    """A deserialized plan: one engine per device, and the lean runtime lease they need."""

    def __init__(
        self,
        name: str,
        path: Path,
        plan: bytes,
        route: Route,
        lease: LeanRuntimeLease | None,
        runtimes: LeanCache,
        device_id: int,
    ) -> None:
        self.name = name
        self.path = path
        self.route = route
        self._plan = plan
        self._lease = lease
        self._runtimes = runtimes
        self._lock = threading.Lock()
        self._engines: dict[int, Any] = {}
        self._instances: list[TensorRTInstance] = []
        engine = self._engine(device_id)
        try:
            self.tensors = describe_tensors(engine, name)
            self._io = ModelIO(
                inputs=tuple(_spec(t) for t in self.tensors if t.is_input),
                outputs=tuple(_spec(t) for t in self.tensors if not t.is_input),
                max_batch_size=max_batch_size(engine, self.tensors),
            )
        except BaseException:
            # The caller releases the lease next: the engine must be gone first.
            del engine
            self._engines.clear()
            raise

    @property
    def io(self) -> ModelIO:
        return self._io

    def smallest_inputs(self, device_id: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Each input's smallest accepted shape (profile 0) and dtype: a cheap trial batch."""
        engine = self._engine(device_id)
        return {
            t.name: (profile_bounds(engine, t, 0)[0], t.dtype) for t in self.tensors if t.is_input
        }

    def create_instance(self, placement: Placement) -> ModelInstance:
        if placement.kind is not DeviceKind.GPU:
            raise FailedPrecondition(
                f"model '{self.name}': TensorRT plans run on a GPU; instance kind "
                f"'{placement.kind.value}' was requested (use KIND_GPU)"
            )
        try:
            require_device(placement.device_id)
        except ServerError as e:
            raise _prefixed(e, self.name) from None
        engine = self._engine(placement.device_id)
        instance = TensorRTInstance(self.name, engine, self.tensors, placement)
        with self._lock:
            self._instances.append(instance)
        return instance

    def close(self) -> None:
        with self._lock:
            instances, self._instances = self._instances, []
            engines, self._engines = self._engines, {}
        for instance in instances:
            instance.close()
        # Engines go before the runtime that made them.
        for device_id in list(engines):
            with use_device(device_id):
                del engines[device_id]
        self._plan = b""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _engine(self, device_id: int) -> Any:
        with self._lock:
            engine = self._engines.get(device_id)
            if engine is None:
                with use_device(device_id):
                    engine = self._deserialize()
                self._engines[device_id] = engine
            return engine

    def _deserialize(self) -> Any:
        mark = RECORDER.mark()
        if self.route.kind is RouteKind.LEAN:
            assert self._lease is not None
            engine = self._lease.runtime.deserialize_cuda_engine(self._plan)
        else:
            engine = self._runtimes.deserialize_with_host_code(self._plan)
        if engine is None:
            said = "; ".join(RECORDER.errors_since(mark)) or "no message from TensorRT"
            raise FailedPrecondition(
                f"model '{self.name}': TensorRT could not deserialize {self.path} with "
                f"{self.route.describe()}: {said}"
            )
        return engine


def describe_tensors(engine: Any, model: str) -> tuple[EngineTensor, ...]:
    """The engine's I/O tensors in engine order; FailedPrecondition for unsupported ones."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        trt_type = _enum_name(engine.get_tensor_dtype(name))
        datatype = TRT_TO_V2.get(trt_type)
        if datatype is None:
            raise FailedPrecondition(
                f"model '{model}': tensor '{name}' has TensorRT type {trt_type}; supported: "
                f"{', '.join(TRT_TO_V2)}"
            )
        tensors.append(
            EngineTensor(
                name=name,
                is_input=_enum_name(engine.get_tensor_mode(name)) == "INPUT",
                datatype=datatype,
                dtype=datatypes.from_name(datatype).dtype,
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            )
        )
    return tuple(tensors)


def profile_bounds(
    engine: Any, tensor: EngineTensor, profile: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(min, max) shape of an input under one optimization profile."""
    if -1 not in tensor.shape:
        return tensor.shape, tensor.shape
    low, _opt, high = engine.get_tensor_profile_shape(tensor.name, profile)
    return tuple(int(d) for d in low), tuple(int(d) for d in high)


def max_batch_size(engine: Any, tensors: Sequence[EngineTensor]) -> int:
    """Largest dimension 0 all inputs accept when it is dynamic in every input, else 0."""
    inputs = [t for t in tensors if t.is_input]
    if not inputs or any(not t.shape or t.shape[0] != -1 for t in inputs):
        return 0
    profiles = range(engine.num_optimization_profiles)
    return min(max(profile_bounds(engine, t, p)[1][0] for p in profiles) for t in inputs)


class TensorRTInstance(ModelInstance):
    """One execution context with its own stream and buffers on one device."""

    def __init__(
        self, model: str, engine: Any, tensors: Sequence[EngineTensor], placement: Placement
    ) -> None:
        self._rt = require_cudart()
        self._model = model
        self._engine: Any = engine
        self._tensors = {t.name: t for t in tensors}
        self._inputs = [t for t in tensors if t.is_input]
        self._device = placement.device_id
        self._closed = False
        self._device_buffers: dict[str, int] = {}
        self._host_buffers: dict[str, int] = {}
        self._capacity: dict[str, int] = {}
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
        self._events = [cuda_call("cudaEventCreate", rt.cudaEventCreate) for _ in range(4)]
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ResourceExhausted(
                f"model '{self._model}': TensorRT could not create an execution context on "
                f"device {self._device} (out of GPU memory?)"
            )
        for name, nbytes in self._max_bytes().items():
            self._capacity[name] = nbytes
            size = max(nbytes, 1)
            self._device_buffers[name] = int(cuda_call("cudaMalloc", rt.cudaMalloc, size))
            self._host_buffers[name] = int(
                cuda_call("cudaHostAlloc", rt.cudaHostAlloc, size, rt.cudaHostAllocDefault)
            )
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
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> ExecutionResult:
        if self._closed:
            raise Unavailable(f"model '{self._model}': the instance is closed")
        with use_device(self._device):
            started = time.perf_counter_ns()
            arrays = self._checked_inputs(inputs)
            self._choose_profile({n: a.shape for n, a in arrays.items()})
            self._stage_inputs(arrays)
            staged = time.perf_counter_ns()
            out_shapes = self._enqueue(arrays, output_names)
            self._sync()
            synced = time.perf_counter_ns()
            outputs = self._collect(out_shapes)
            done = time.perf_counter_ns()
            h2d, infer, d2h = self._event_times()
        # GPU work is timed by CUDA events; host staging by the clock.
        return ExecutionResult(
            outputs,
            ExecutionTimings(
                compute_input_ns=(staged - started) + h2d,
                compute_infer_ns=infer,
                compute_output_ns=d2h + (done - synced),
            ),
        )

    def memory(self) -> InstanceMemory:
        """The instance's stream and buffers (what a placement check inspects)."""
        return InstanceMemory(
            self._device,
            int(self._stream),
            dict(self._device_buffers),
            dict(self._host_buffers),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with use_device(self._device):
            self._release()

    def _checked_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {}
        for tensor in self._inputs:
            array = inputs.get(tensor.name)
            if array is None:
                raise InvalidArgument(f"model '{self._model}': input '{tensor.name}' is missing")
            if array.dtype != tensor.dtype:
                raise InvalidArgument(
                    f"model '{self._model}': input '{tensor.name}': expected datatype "
                    f"{tensor.datatype}, received numpy {array.dtype}"
                )
            if array.nbytes > self._capacity[tensor.name]:
                raise InvalidArgument(
                    f"model '{self._model}': input '{tensor.name}': shape {list(array.shape)} "
                    f"is larger than the engine's largest profile shape"
                )
            arrays[tensor.name] = np.ascontiguousarray(array)
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

    def _stage_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            view = _host_view(self._host_buffers[name], array.nbytes)
            view[:] = array.reshape(-1).view(np.uint8)

    def _enqueue(
        self, arrays: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, tuple[int, ...]]:
        """H2D copies, the engine, D2H copies of the requested outputs, all on the stream."""
        rt = self._rt
        stream = self._stream
        mark = RECORDER.mark()
        self._record(0)
        for name, array in arrays.items():
            self._copy(
                self._device_buffers[name],
                self._host_buffers[name],
                array.nbytes,
                rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                f"input '{name}'",
            )
            self._set_input_shape(name, array.shape)
        for name, address in self._device_buffers.items():
            if not self._context.set_tensor_address(name, address):
                raise FailedPrecondition(
                    f"model '{self._model}': TensorRT refused the address of tensor '{name}'"
                )
        self._record(1)
        if not self._context.execute_async_v3(int(stream)):
            raise FailedPrecondition(
                f"model '{self._model}': TensorRT execute_async_v3 failed: "
                + ("; ".join(RECORDER.errors_since(mark)) or "no message")
            )
        self._record(2)
        shapes = {}
        for name in output_names:
            tensor = self._tensors.get(name)
            if tensor is None or tensor.is_input:
                raise InvalidArgument(f"model '{self._model}': no output named '{name}'")
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            nbytes = math.prod(shape) * tensor.dtype.itemsize
            self._copy(
                self._host_buffers[name],
                self._device_buffers[name],
                nbytes,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                f"output '{name}'",
            )
            shapes[name] = shape
        self._record(3)
        return shapes

    def _collect(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        outputs = {}
        for name, shape in shapes.items():
            dtype = self._tensors[name].dtype
            nbytes = math.prod(shape) * dtype.itemsize
            view = _host_view(self._host_buffers[name], nbytes)
            outputs[name] = view.view(dtype).reshape(shape).copy()
        return outputs

    def _set_input_shape(self, name: str, shape: Sequence[int]) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            low, high = self._bounds[self._profile][name]
            raise InvalidArgument(
                f"model '{self._model}': input '{name}': shape {list(shape)} is outside "
                f"optimization profile {self._profile} ({list(low)}..{list(high)})"
            )

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any, what: str) -> None:
        if nbytes == 0:
            return
        cuda_call(
            f"cudaMemcpyAsync of {what}",
            self._rt.cudaMemcpyAsync,
            dst,
            src,
            nbytes,
            kind,
            self._stream,
        )

    def _record(self, index: int) -> None:
        cuda_call("cudaEventRecord", self._rt.cudaEventRecord, self._events[index], self._stream)

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
            _attempt(errors, "cudaStreamSynchronize", rt.cudaStreamSynchronize, self._stream)
        self._context = None
        for address in self._device_buffers.values():
            _attempt(errors, "cudaFree", rt.cudaFree, address)
        for address in self._host_buffers.values():
            _attempt(errors, "cudaFreeHost", rt.cudaFreeHost, address)
        self._device_buffers, self._host_buffers = {}, {}
        for event in self._events:
            _attempt(errors, "cudaEventDestroy", rt.cudaEventDestroy, event)
        self._events = []
        if self._stream is not None:
            _attempt(errors, "cudaStreamDestroy", rt.cudaStreamDestroy, self._stream)
            self._stream = None
        self._engine = None
        if errors:
            raise errors[0]


def _attempt(errors: list[CudaError], what: str, fn: Any, *args: Any) -> None:
    try:
        cuda_call(what, fn, *args)
    except CudaError as e:
        errors.append(e)


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


def _host_view(address: int, nbytes: int) -> np.ndarray:
    """A uint8 numpy view of pinned host memory."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    buffer = (ctypes.c_uint8 * nbytes).from_address(address)
    return np.ctypeslib.as_array(buffer)


def _enum_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name) if name is not None else str(value).rsplit(".", 1)[-1]


def _spec(tensor: EngineTensor) -> TensorSpec:
    return TensorSpec(tensor.name, tensor.datatype, tensor.shape)


def _first_gpu(settings: ModelSettings) -> int:
    for group in settings.instance_groups:
        if group.kind is DeviceKind.GPU and group.device_ids:
            return group.device_ids[0]
    return 0


def _read_plan(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FailedPrecondition(f"model '{name}': cannot read {path}: {e.strerror or e}") from e


def _read_header(plan: bytes, path: Path, name: str) -> PlanHeader:
    try:
        return read_plan_header(plan)
    except PlanHeaderError as e:
        raise FailedPrecondition(f"model '{name}': {path}: {e}") from None


def _prefixed(error: ServerError, name: str) -> ServerError:
    prefix = f"model '{name}': "
    text = str(error)
    return error if text.startswith(prefix) else type(error)(prefix + text)
