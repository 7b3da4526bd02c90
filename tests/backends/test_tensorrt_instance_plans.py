"""TensorRTInstance carrying out its plans, against a fake CUDA runtime and a fake engine.

"GPU memory" here is host memory, and every cudaMemcpyAsync a memmove, so that which tensor is
bound where, what is copied and what comes back is checked without a GPU. The engine computes
y = 2 * x + 1 from whatever addresses it was bound to last.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from trtserve.server.backends import tensorrt_instance
from trtserve.server.backends.base import Placement
from trtserve.server.backends.tensorrt_instance import TensorRTInstance
from trtserve.server.backends.tensorrt_tensors import EngineTensor
from trtserve.server.errors import InvalidArgument
from trtserve.server.runtime import cuda_device, host_pinning
from trtserve.server.runtime.host_pinning import PinnedHostRanges
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    DeviceMemory,
    GatheredArray,
    OutputTarget,
    PlacedOutput,
    RowTarget,
)
from trtserve.server.specs import DeviceKind

F32 = np.dtype(np.float32)
ROW = 16


class _Kinds:
    cudaMemcpyHostToDevice = "h2d"
    cudaMemcpyDeviceToHost = "d2h"
    cudaMemcpyDefault = "default"


@dataclass
class FakeCudart:
    """The runtime calls an instance makes; allocations are 256-aligned numpy buffers."""

    cudaStreamNonBlocking: int = 1
    cudaHostAllocDefault: int = 0
    cudaEventDefault: int = 0
    cudaEventBlockingSync: int = 1
    cudaHostRegisterPortable: int = 1
    cudaMemcpyKind: type = _Kinds
    live: dict[int, np.ndarray] = field(default_factory=dict)
    copies: list[tuple[str, int, int, int]] = field(default_factory=list)

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        view = aligned(nbytes)
        self.live[view.ctypes.data] = view
        return 0, view.ctypes.data

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        return self._alloc(nbytes)

    def cudaHostAlloc(self, nbytes: int, flags: int) -> tuple[int, int]:
        return self._alloc(nbytes)

    def cudaFree(self, address: int) -> tuple[int]:
        del self.live[address]
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: str, stream: int) -> tuple[int]:
        ctypes.memmove(dst, src, n)
        self.copies.append((kind, dst, src, n))
        return (0,)

    def cudaGetDevice(self) -> tuple[int, int]:
        return 0, 0

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (0,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:
        return 0, 7

    def cudaEventCreateWithFlags(self, flags: int) -> tuple[int, object]:
        return 0, object()

    def cudaEventSynchronize(self, event: object) -> tuple[int]:
        return (0,)

    def cudaEventRecord(self, event: object, stream: int) -> tuple[int]:
        return (0,)

    def cudaEventElapsedTime(self, start: object, end: object) -> tuple[int, float]:
        return 0, 0.001

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaEventDestroy(self, event: object) -> tuple[int]:
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaHostRegister(self, address: int, nbytes: int, flags: int) -> tuple[int]:
        return (0,)

    def cudaHostUnregister(self, address: int) -> tuple[int]:
        return (0,)


def aligned(nbytes: int) -> np.ndarray:
    """A zeroed uint8 buffer whose address is a multiple of 256."""
    raw = np.zeros(max(nbytes, 1) + 256, np.uint8)
    start = (-raw.ctypes.data) % 256
    return raw[start : start + nbytes]


def floats(address: int, rows: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_float * (rows * 4)).from_address(address)).reshape(
        rows, 4
    )


class FakeContext:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        ok = len(shape) == 2 and 1 <= shape[0] <= 8 and shape[1] == 4
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        rows = self.shapes["x"][0]
        x = floats(self.addresses["x"], rows)
        floats(self.addresses["y"], rows)[:] = 2 * x + 1
        return True


class FakeEngine:
    num_optimization_profiles = 1

    def __init__(self) -> None:
        self.context = FakeContext()

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, int], ...]:
        return (1, 4), (4, 4), (8, 4)

    def create_execution_context(self) -> FakeContext:
        return self.context


TENSORS = (
    EngineTensor("x", True, "FP32", F32, (-1, 4)),
    EngineTensor("y", False, "FP32", F32, (-1, 4)),
)


@dataclass
class Rig:
    rt: FakeCudart
    engine: FakeEngine
    instance: TensorRTInstance
    pinned: PinnedHostRanges

    @property
    def bound(self) -> dict[str, int]:
        return self.engine.context.addresses

    @property
    def own(self) -> dict[str, int]:
        return dict(self.instance.memory().device_buffers)

    def kinds(self) -> list[str]:
        return [c[0] for c in self.rt.copies]


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    rt = FakeCudart()
    monkeypatch.setattr(cuda_device, "cudart", lambda: rt)
    monkeypatch.setattr(host_pinning, "cudart", lambda: rt)
    monkeypatch.setattr(host_pinning, "cuda_device_count", lambda: 1)
    pinned = PinnedHostRanges()
    monkeypatch.setattr(tensorrt_instance, "PINNED", pinned)
    engine = FakeEngine()
    instance = TensorRTInstance("doubler", engine, TENSORS, Placement(DeviceKind.GPU, 0, 0))
    yield Rig(rt, engine, instance, pinned)
    instance.close()


def x_of(rows: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(rows * 4, dtype=np.float32) + start).reshape(rows, 4)


def on_gpu(array: np.ndarray, offset: int = 0) -> tuple[DeviceArray, np.ndarray]:
    """`array` copied into fake GPU memory at `offset` past a 256-byte boundary."""
    memory = aligned(array.nbytes + offset)
    memory[offset:] = array.reshape(-1).view(np.uint8)
    return DeviceArray(0, memory.ctypes.data + offset, array.dtype, array.shape), memory


def test_plain_host_input_is_staged_and_the_output_returned(rig: Rig) -> None:
    x = x_of(3)
    result = rig.instance.execute({"x": x}, ["y"])
    assert np.array_equal(result.outputs["y"], 2 * x + 1)
    assert result.placed == frozenset()
    assert rig.kinds() == ["h2d", "d2h"]
    assert rig.bound == rig.own
    assert result.timings.compute_infer_ns > 0


def test_an_output_held_by_a_reply_is_not_overwritten_by_the_next_execution(rig: Rig) -> None:
    first = rig.instance.execute({"x": x_of(2)}, ["y"]).outputs["y"]
    second = rig.instance.execute({"x": x_of(2, start=100)}, ["y"]).outputs["y"]
    assert isinstance(first, np.ndarray) and isinstance(second, np.ndarray)
    # Each came back in a pooled buffer of its own, copied there straight from the GPU.
    assert np.array_equal(first, 2 * x_of(2) + 1)
    assert np.array_equal(second, 2 * x_of(2, start=100) + 1)
    assert not np.shares_memory(first, second)
    d2h = [c for c in rig.rt.copies if c[0] == "d2h"]
    assert d2h[0][1] == first.ctypes.data and d2h[1][1] == second.ctypes.data
    # A buffer no reply holds any more is lent again.
    address = first.ctypes.data
    del first
    third = rig.instance.execute({"x": x_of(2)}, ["y"]).outputs["y"]
    assert isinstance(third, np.ndarray) and third.ctypes.data == address


def test_pinned_host_input_is_copied_from_its_own_address(rig: Rig) -> None:
    region = x_of(4)
    assert rig.pinned.pin(region.ctypes.data, region.nbytes)
    x = region[1:3]
    result = rig.instance.execute({"x": x}, ["y"])
    assert np.array_equal(result.outputs["y"], 2 * x + 1)
    assert rig.rt.copies[0] == ("h2d", rig.own["x"], x.ctypes.data, 2 * ROW)


def test_aligned_gpu_input_is_bound_and_the_next_call_binds_the_own_buffer_again(
    rig: Rig,
) -> None:
    x = x_of(2, start=5)
    device, _memory = on_gpu(x)
    first = rig.instance.execute({"x": device}, ["y"])
    assert np.array_equal(first.outputs["y"], 2 * x + 1)
    assert rig.bound["x"] == device.address
    assert rig.kinds() == ["d2h"]
    plain = x_of(2)
    second = rig.instance.execute({"x": plain}, ["y"])
    assert rig.bound == rig.own
    assert np.array_equal(second.outputs["y"], 2 * plain + 1)


def test_misaligned_gpu_input_is_copied_device_to_device(rig: Rig) -> None:
    x = x_of(2, start=3)
    device, _memory = on_gpu(x, offset=4)
    result = rig.instance.execute({"x": device}, ["y"])
    assert np.array_equal(result.outputs["y"], 2 * x + 1)
    assert rig.rt.copies[0] == ("default", rig.own["x"], device.address, 2 * ROW)
    assert rig.bound == rig.own


def test_gathered_parts_make_one_batch(rig: Rig) -> None:
    region = x_of(2, start=100)
    assert rig.pinned.pin(region.ctypes.data, region.nbytes)
    host, gpu_part, pinned_part = x_of(2), x_of(1, start=50), region[1:]
    device, _memory = on_gpu(gpu_part)
    result = rig.instance.execute({"x": GatheredArray((host, device, pinned_part))}, ["y"])
    expected = 2 * np.concatenate([host, gpu_part, pinned_part]) + 1
    assert np.array_equal(result.outputs["y"], expected)
    assert rig.kinds() == ["h2d", "default", "h2d", "d2h"]


def test_one_aligned_gpu_target_is_written_by_the_engine_and_released_after(rig: Rig) -> None:
    x = x_of(3)
    memory = aligned(3 * ROW)
    target = OutputTarget("out", 3 * ROW, device=DeviceMemory(0, memory.ctypes.data, 3 * ROW))
    result = rig.instance.execute({"x": x}, ["y"], {"y": [RowTarget(0, 3, target)]})
    assert result.outputs["y"] == PlacedOutput(F32, (3, 4))
    assert result.placed == frozenset({"y"})
    assert np.array_equal(memory.view(np.float32).reshape(3, 4), 2 * x + 1)
    assert rig.kinds() == ["h2d"]
    memory[:] = 0
    rig.instance.execute({"x": x}, ["y"])
    assert rig.bound == rig.own
    assert not memory.any()


def test_rows_of_some_requests_go_to_their_targets_and_the_whole_comes_back(rig: Rig) -> None:
    x = x_of(3)
    view = np.zeros(2 * ROW, np.uint8)
    target = OutputTarget("host", view.nbytes, host=view)
    result = rig.instance.execute({"x": x}, ["y"], {"y": [RowTarget(1, 2, target)]})
    assert result.placed == frozenset({"y"})
    assert np.array_equal(result.outputs["y"], 2 * x + 1)
    assert np.array_equal(view.view(np.float32).reshape(2, 4), 2 * x[1:] + 1)


def test_a_target_without_room_fails_before_any_copy(rig: Rig) -> None:
    memory = aligned(3 * ROW)
    target = OutputTarget("small", ROW, device=DeviceMemory(0, memory.ctypes.data, ROW))
    with pytest.raises(InvalidArgument, match=r"room for 16 bytes.*needs 48"):
        rig.instance.execute({"x": x_of(3)}, ["y"], {"y": [RowTarget(0, None, target)]})
    assert rig.rt.copies == []


def test_gathered_parts_of_another_dtype_are_refused(rig: Rig) -> None:
    parts = (x_of(1), x_of(1).astype(np.float64))
    with pytest.raises(InvalidArgument, match="expected datatype FP32"):
        rig.instance.execute({"x": GatheredArray(parts)}, ["y"])
