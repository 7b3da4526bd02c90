"""Tensors by reference on a GPU: the TensorRT instance with the real 11.0.0.114 plan reading
GPU and pinned host memory in place, writing outputs into targets, and CUDA IPC between two
processes.

Every result must equal, bit for bit, the plain execute of the same input. Needs what
test_tensorrt_gpu.py needs (a CUDA device, tensorrt_dispatch, cuda-bindings, the plans and lean
runtime 11.0.0.114); skipped otherwise. The plan is not batched (1x3x224x224 in), so a gathered
input here has one part of one row and one of none; tests/backends covers offsets of many parts.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from ipc_exporter import export
from plan_fixtures import (
    INPUT_SHAPE,
    OUTPUT_SHAPE,
    PLAN_NAME,
    plans_dir,
    requirements_missing,
    seeded_input,
)

from trtserve.server.backends.base import ModelInstance, Placement
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.backends.tensorrt_model import TensorRTModel
from trtserve.server.errors import InvalidArgument
from trtserve.server.runtime.cuda_copies import device_to_host, host_to_device
from trtserve.server.runtime.cuda_ipc import close_ipc_memory, open_ipc_memory
from trtserve.server.runtime.host_pinning import PINNED
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    DeviceMemory,
    GatheredArray,
    OutputTarget,
    PlacedOutput,
    RowTarget,
)
from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings

pytestmark = pytest.mark.gpu

_missing = requirements_missing()
if _missing:
    pytest.skip(_missing, allow_module_level=True)

F32 = np.dtype(np.float32)
IN_BYTES = math.prod(INPUT_SHAPE) * 4
OUT_BYTES = math.prod(OUTPUT_SHAPE) * 4


def cuda(result: Any) -> Any:
    """The value of one cuda-bindings call, asserting its status."""
    err = result[0] if isinstance(result, tuple) else result
    assert int(err) == 0, f"CUDA error {err}"
    return result[1] if isinstance(result, tuple) and len(result) > 1 else None


class GpuMemory:
    """cudaMalloc'd buffers on device 0, freed together."""

    def __init__(self) -> None:
        from cuda.bindings import runtime

        self.rt = runtime
        self.addresses: list[int] = []

    def alloc(self, nbytes: int) -> int:
        cuda(self.rt.cudaSetDevice(0))
        address = int(cuda(self.rt.cudaMalloc(nbytes)))
        self.addresses.append(address)
        return address

    def zero(self, address: int, nbytes: int) -> None:
        cuda(self.rt.cudaMemset(address, 0, nbytes))
        # cudaMemset returns before it ran; a later write it raced with would go unseen.
        cuda(self.rt.cudaDeviceSynchronize())

    def free(self) -> None:
        for address in self.addresses:
            cuda(self.rt.cudaFree(address))
        self.addresses = []


@pytest.fixture(scope="module")
def model() -> Iterator[TensorRTModel]:
    settings = ModelSettings(
        name="conv_relu",
        platform="tensorrt_plan",
        instance_groups=(InstanceGroup(1, DeviceKind.GPU, (0,)),),
    )
    loaded = TensorRTBackend(store=LeanStore()).load(plans_dir() / PLAN_NAME, settings)
    assert isinstance(loaded, TensorRTModel)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def instance(model: TensorRTModel) -> ModelInstance:
    # The model closes its instances.
    return model.create_instance(Placement(DeviceKind.GPU, device_id=0))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return seeded_input()


@pytest.fixture(scope="module")
def expected(instance: ModelInstance, x: np.ndarray) -> bytes:
    out = instance.execute({"x": x}, ["output0"]).outputs["output0"]
    assert isinstance(out, np.ndarray) and out.shape == OUTPUT_SHAPE
    return out.tobytes()


@pytest.fixture
def gpu() -> Iterator[GpuMemory]:
    memory = GpuMemory()
    yield memory
    memory.free()


def on_gpu(gpu: GpuMemory, x: np.ndarray, offset: int = 0) -> DeviceArray:
    base = gpu.alloc(x.nbytes + 256)
    host_to_device(x, DeviceMemory(0, base + offset, x.nbytes))
    return DeviceArray(0, base + offset, x.dtype, tuple(x.shape))


def gpu_target(gpu: GpuMemory, offset: int = 0, nbytes: int = OUT_BYTES) -> DeviceMemory:
    return DeviceMemory(0, gpu.alloc(OUT_BYTES + 256) + offset, nbytes)


def whole(target: OutputTarget) -> dict[str, list[RowTarget]]:
    return {"output0": [RowTarget(0, None, target)]}


def read_back(memory: DeviceMemory) -> bytes:
    return device_to_host(DeviceArray(0, memory.address, F32, OUTPUT_SHAPE)).tobytes()


def test_gpu_input_and_gpu_output_bound_in_place(
    model: TensorRTModel,
    instance: ModelInstance,
    x: np.ndarray,
    expected: bytes,
    gpu: GpuMemory,
) -> None:
    assert model.device_tensors
    target = gpu_target(gpu)
    result = instance.execute(
        {"x": on_gpu(gpu, x)}, ["output0"], whole(OutputTarget("out", OUT_BYTES, device=target))
    )
    assert result.outputs["output0"] == PlacedOutput(F32, OUTPUT_SHAPE)
    assert result.placed == frozenset({"output0"})
    assert result.timings.compute_infer_ns > 0
    assert read_back(target) == expected
    # The next plain call must not write into the client's memory any more.
    gpu.zero(target.address, OUT_BYTES)
    plain = instance.execute({"x": x}, ["output0"]).outputs["output0"]
    assert isinstance(plain, np.ndarray) and plain.tobytes() == expected
    assert not device_to_host(DeviceArray(0, target.address, F32, OUTPUT_SHAPE)).any()


def test_misaligned_gpu_input_and_output_are_copied(
    instance: ModelInstance, x: np.ndarray, expected: bytes, gpu: GpuMemory
) -> None:
    target = gpu_target(gpu, offset=4)
    result = instance.execute(
        {"x": on_gpu(gpu, x, offset=4)},
        ["output0"],
        whole(OutputTarget("out", OUT_BYTES, device=target)),
    )
    assert result.placed == frozenset({"output0"})
    assert read_back(target) == expected


@pytest.mark.parametrize("host_rows", [1, 0])
def test_gathered_host_and_gpu_parts(
    instance: ModelInstance, x: np.ndarray, expected: bytes, gpu: GpuMemory, host_rows: int
) -> None:
    gathered = GatheredArray((x[:host_rows], on_gpu(gpu, x[host_rows:])))
    out = instance.execute({"x": gathered}, ["output0"]).outputs["output0"]
    assert isinstance(out, np.ndarray) and out.tobytes() == expected


@pytest.mark.parametrize("pin", [True, False])
def test_host_input_and_host_target(
    instance: ModelInstance, x: np.ndarray, expected: bytes, pin: bool
) -> None:
    region = np.zeros(IN_BYTES + OUT_BYTES + 64, np.uint8)
    if pin:
        assert PINNED.pin(region.ctypes.data, region.nbytes)
    try:
        x_in = region[:IN_BYTES].view(np.float32).reshape(INPUT_SHAPE)
        x_in[:] = x
        assert PINNED.contains(x_in.ctypes.data, x_in.nbytes) is pin
        view = region[IN_BYTES + 64 :]
        result = instance.execute(
            {"x": x_in}, ["output0"], whole(OutputTarget("host", view.nbytes, host=view))
        )
        assert result.outputs["output0"] == PlacedOutput(F32, OUTPUT_SHAPE)
        assert view.tobytes() == expected
    finally:
        PINNED.unpin(region.ctypes.data)


def test_output_target_too_small_names_the_sizes(
    instance: ModelInstance, x: np.ndarray, gpu: GpuMemory
) -> None:
    target = gpu_target(gpu, nbytes=OUT_BYTES - 4)
    with pytest.raises(InvalidArgument, match=f"room for {OUT_BYTES - 4} bytes.*needs {OUT_BYTES}"):
        instance.execute(
            {"x": x}, ["output0"], whole(OutputTarget("small", target.nbytes, device=target))
        )


def test_copies_round_trip(gpu: GpuMemory) -> None:
    data = np.arange(1000, dtype=np.int64).reshape(10, 100)
    memory = DeviceMemory(0, gpu.alloc(data.nbytes), data.nbytes)
    host_to_device(data, memory)
    back = device_to_host(DeviceArray(0, memory.address, data.dtype, data.shape))
    assert np.array_equal(back, data)


def test_ipc_handle_from_another_process(
    instance: ModelInstance, x: np.ndarray, expected: bytes
) -> None:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=export, args=(theirs,))
    child.start()
    try:
        ours.send(x.tobytes())
        assert ours.poll(120), "the exporting process sent no handle"
        raw = ours.recv()
        assert isinstance(raw, bytes) and len(raw) == 64
        memory = open_ipc_memory(raw, 0)
        again = open_ipc_memory(raw, 0)
        assert again == memory
        assert memory.nbytes >= IN_BYTES
        assert device_to_host(DeviceArray(0, memory.address, F32, INPUT_SHAPE)).tobytes() == (
            x.tobytes()
        )
        close_ipc_memory(again)
        # Still mapped: the first registration holds it.
        shared = DeviceArray(0, memory.address, F32, INPUT_SHAPE)
        out = instance.execute({"x": shared}, ["output0"]).outputs["output0"]
        assert isinstance(out, np.ndarray) and out.tobytes() == expected
        close_ipc_memory(memory)
        ours.send("free")
        assert ours.poll(60) and ours.recv() == "freed"
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


def test_bad_ipc_handles_and_devices_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgument, match="expected 64 bytes"):
        open_ipc_memory(bytes(10), 0)
    with pytest.raises(InvalidArgument, match="CUDA could not open the IPC handle"):
        open_ipc_memory(bytes(range(64)), 0)
    with pytest.raises(InvalidArgument, match="CUDA device 99 does not exist"):
        open_ipc_memory(bytes(64), 99)
