"""One plan served from two GPUs of one host: placement by `device_id`, in and out of a server.

Checks, with CUDA's own answers rather than trtserve's: each instance's stream and buffers are
on its device (cudaStreamGetDevice, cudaPointerGetAttributes), each engine and instance takes
memory on its own device only (cudaMemGetInfo), engines are deserialized with their device
current, the lean runtime is loaded once for the process, and both devices give the same
output as TensorRT run directly. Then a real server with instances on GPU 0 and GPU 1.

Needs two CUDA devices (the GPU tool's `nvidia-h200-x2`) and what test_tensorrt_gpu.py needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plan_fixtures import (
    PLAN_NAME,
    VERSION,
    direct_run,
    plans_dir,
    requirements_missing,
    seeded_input,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trtserve.server.backends.base import ModelInstance, Placement
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.backends.tensorrt_instance import TensorRTInstance
from trtserve.server.backends.tensorrt_model import TensorRTModel
from trtserve.server.errors import FailedPrecondition
from trtserve.server.runtime.cuda_device import (
    cuda_call,
    cuda_device_count,
    require_cudart,
    use_device,
)
from trtserve.server.runtime.lean_store import ENV_RUNTIMES_DIR, LeanStore
from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings

pytestmark = pytest.mark.gpu

_missing = requirements_missing(devices=2)
if _missing:
    pytest.skip(_missing, allow_module_level=True)

# The session conftest puts tests/ on sys.path.
from server_process import ServerProcess, start_server  # noqa: E402

from trtserve.client import InferenceClient, InferenceServerError, InferInput  # noqa: E402

# The plan's output at its only shape: the largest buffer every instance allocates on its device
# (too large to come from memory the driver kept back from an earlier small allocation).
OUTPUT_BYTES = 16 * 222 * 222 * 4
MIB = 1 << 20


def settings(name: str, devices: tuple[int, ...], count: int = 1) -> ModelSettings:
    return ModelSettings(
        name=name,
        platform="tensorrt_plan",
        instance_groups=(InstanceGroup(count, DeviceKind.GPU, devices),),
    )


def gpu(device_id: int, index: int = 0) -> Placement:
    return Placement(DeviceKind.GPU, device_id=device_id, index=index)


def current_device() -> int:
    rt = require_cudart()
    return int(cuda_call("cudaGetDevice", rt.cudaGetDevice))


def free_bytes() -> dict[int, int]:
    """Free memory of every device, as the driver reports it (all processes count)."""
    rt = require_cudart()
    free = {}
    for device in range(cuda_device_count()):
        with use_device(device):
            free[device] = int(cuda_call("cudaMemGetInfo", rt.cudaMemGetInfo)[0])
    return free


def taken(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """Bytes each device lost between two `free_bytes` readings."""
    return {device: before[device] - after[device] for device in before}


def lean_loads(backend: TensorRTBackend) -> float:
    registry = CollectorRegistry()
    registry.register(backend.runtimes.metrics)
    labels = {"version": str(VERSION)}
    return registry.get_sample_value("trtserve_lean_runtime_loads_total", labels) or 0.0


def assert_on_device(instance: TensorRTInstance, device: int) -> None:
    """CUDA says the instance's stream and device buffers are on `device`."""
    rt = require_cudart()
    memory = instance.memory()
    assert memory.device_id == device
    stream_device = cuda_call("cudaStreamGetDevice", rt.cudaStreamGetDevice, memory.stream)
    assert int(stream_device) == device
    for name, address in memory.device_buffers.items():
        attributes = cuda_call("cudaPointerGetAttributes", rt.cudaPointerGetAttributes, address)
        assert attributes.type == rt.cudaMemoryType.cudaMemoryTypeDevice, name
        assert int(attributes.device) == device, f"device buffer of '{name}'"
    for name, address in memory.host_buffers.items():
        attributes = cuda_call("cudaPointerGetAttributes", rt.cudaPointerGetAttributes, address)
        assert attributes.type == rt.cudaMemoryType.cudaMemoryTypeHost, name
        assert int(attributes.device) == device, f"pinned buffer of '{name}'"


def run_from_thread(instance: ModelInstance, x: np.ndarray, thread_device: int) -> bytes:
    """Execute on a fresh thread whose current device is `thread_device`; check it is kept."""
    result: list[bytes] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            rt = require_cudart()
            cuda_call("cudaSetDevice", rt.cudaSetDevice, thread_device)
            out = instance.execute({"x": x}, ["output0"]).outputs["output0"]
            assert current_device() == thread_device, "execute changed the thread's device"
            result.append(out.tobytes())
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(120)
    if errors:
        raise errors[0]
    assert result, "the execution thread did not finish"
    return result[0]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return seeded_input()


@pytest.fixture(scope="module")
def expected(x: np.ndarray) -> dict[int, bytes]:
    """TensorRT run directly, on each device."""
    return {device: direct_run(x, device).tobytes() for device in (0, 1)}


@pytest.fixture(scope="module")
def backend() -> TensorRTBackend:
    return TensorRTBackend(store=LeanStore())


def test_direct_runs_agree_across_devices(expected: dict[int, bytes]) -> None:
    assert expected[0] == expected[1]


def test_each_device_holds_its_own_engine_context_stream_and_buffers(
    backend: TensorRTBackend,
    x: np.ndarray,
    expected: dict[int, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deserialized_on: list[int] = []
    deserialize = TensorRTModel._deserialize

    def spy(self: TensorRTModel) -> Any:
        deserialized_on.append(current_device())
        return deserialize(self)

    monkeypatch.setattr(TensorRTModel, "_deserialize", spy)
    free_bytes()  # both devices' primary contexts exist before anything is measured
    refs_before = backend.runtimes.loaded().get(VERSION, 0)
    loads_before = lean_loads(backend)

    # Device 1 first, so a forgotten cudaSetDevice (which leaves device 0) would show.
    model = backend.load(plans_dir() / PLAN_NAME, settings("two_gpus", (1, 0)))
    assert isinstance(model, TensorRTModel)
    instances: list[ModelInstance] = []
    try:
        assert deserialized_on == [1]
        loads_after_load = lean_loads(backend)
        assert loads_after_load - loads_before <= 1

        before = free_bytes()
        instances.append(model.create_instance(gpu(1, index=0)))
        between = free_bytes()
        instances.append(model.create_instance(gpu(0, index=1)))
        after = free_bytes()
        on_1, on_0 = instances
        assert isinstance(on_1, TensorRTInstance) and isinstance(on_0, TensorRTInstance)

        # The second device got its own engine, deserialized with that device current.
        assert deserialized_on == [1, 0]
        first, second = taken(before, between), taken(between, after)
        assert first[1] >= OUTPUT_BYTES and first[0] < MIB, first
        assert second[0] >= OUTPUT_BYTES and second[1] < MIB, second

        assert_on_device(on_1, 1)
        assert_on_device(on_0, 0)

        # One lean runtime for both engines: no second load, one lease for the model.
        assert lean_loads(backend) == loads_after_load
        assert backend.runtimes.loaded().get(VERSION, 0) == refs_before + 1

        # Each runs from a thread whose current device is the other one.
        out_1 = run_from_thread(on_1, x, thread_device=0)
        out_0 = run_from_thread(on_0, x, thread_device=1)
        assert out_1 == out_0 == expected[0]
    finally:
        for instance in instances:
            instance.close()
        model.close()
    assert backend.runtimes.loaded().get(VERSION, 0) == refs_before


def test_instances_on_both_devices_run_concurrently(
    backend: TensorRTBackend, x: np.ndarray, expected: dict[int, bytes]
) -> None:
    model = backend.load(plans_dir() / PLAN_NAME, settings("concurrent", (0, 1), count=2))
    placements = [gpu(device, index=2 * device + i) for device in (0, 1) for i in range(2)]
    instances = [model.create_instance(p) for p in placements]
    outputs: dict[int, set[bytes]] = {i: set() for i in range(len(instances))}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(25):
                out = instances[i].execute({"x": x}, ["output0"]).outputs["output0"]
                outputs[i].add(out.tobytes())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(instances))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for instance in instances:
            instance.close()
        model.close()
    assert errors == []
    assert all(seen == {expected[0]} for seen in outputs.values()), "outputs differ"


def test_a_device_that_does_not_exist_is_refused_and_the_others_keep_running(
    backend: TensorRTBackend, x: np.ndarray, expected: dict[int, bytes]
) -> None:
    count = cuda_device_count()
    message = re.escape(f"CUDA device {count} does not exist: this process sees {count} device(s)")
    with pytest.raises(FailedPrecondition, match=message):
        backend.load(plans_dir() / PLAN_NAME, settings("absent", (count,)))
    model = backend.load(plans_dir() / PLAN_NAME, settings("present", (0, 1)))
    instances = [model.create_instance(gpu(0)), model.create_instance(gpu(1, index=1))]
    try:
        with pytest.raises(FailedPrecondition, match=message):
            model.create_instance(gpu(count, index=2))
        for instance in instances:
            assert (
                instance.execute({"x": x}, ["output0"]).outputs["output0"].tobytes()
                == (expected[0])
            )
    finally:
        for instance in instances:
            instance.close()
        model.close()


# --- a server with instances on both GPUs ---------------------------------------------------


def model_config(name: str, gpus: list[int]) -> str:
    return json.dumps(
        {
            "name": name,
            "platform": "tensorrt_plan",
            "max_batch_size": 0,
            "instance_group": [{"count": 1, "kind": "KIND_GPU", "gpus": gpus}],
        }
    )


def place_model(repository: Path, name: str, gpus: list[int]) -> None:
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.json").write_text(model_config(name, gpus))
    shutil.copyfile(plans_dir() / PLAN_NAME, folder / "1" / "model.plan")


def scrape(proc: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def executions_by_device(samples: dict[Any, float], model: str) -> dict[str, float]:
    by_device: dict[str, float] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "trtserve_instance_executions_total" and label["model"] == model:
            by_device[label["device"]] = by_device.get(label["device"], 0.0) + value
    return by_device


@dataclass
class TwoGpuServer:
    """A server whose model `conv` has one instance on GPU 0 and one on GPU 1."""

    proc: ServerProcess
    # Device memory each GPU lost while the server started and loaded the model.
    memory_taken: dict[int, int]


@pytest.fixture(scope="module")
def two_gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoGpuServer]:
    repository = tmp_path_factory.mktemp("multi-gpu-repository")
    place_model(repository, "conv", [0, 1])
    runtimes = str(Path(os.environ[ENV_RUNTIMES_DIR]).resolve())
    before = free_bytes()
    proc = start_server(["--repository", str(repository), "--runtimes-dir", runtimes], timeout=180)
    try:
        yield TwoGpuServer(proc, taken(before, free_bytes()))
        assert proc.terminate(timeout=60) == 0
    finally:
        proc.kill()


def test_server_serves_from_both_gpus(
    two_gpu_server: TwoGpuServer, x: np.ndarray, expected: dict[int, bytes]
) -> None:
    proc = two_gpu_server.proc
    # The server process took memory on both devices (its contexts, engines and buffers).
    memory = two_gpu_server.memory_taken
    assert all(memory[device] >= OUTPUT_BYTES for device in (0, 1)), memory

    requests_per_thread, threads = 8, 16
    outputs: set[bytes] = set()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with InferenceClient(proc.address, timeout=120) as client:
                for _ in range(requests_per_thread):
                    result = client.infer("conv", [InferInput("x", x)])
                    outputs.add(result.as_numpy("output0").tobytes())
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(180)
    assert errors == []
    assert outputs == {expected[0]}

    samples = scrape(proc)
    by_device = executions_by_device(samples, "conv")
    assert set(by_device) == {"gpu:0", "gpu:1"}, by_device
    assert all(count > 0 for count in by_device.values()), by_device
    assert sum(by_device.values()) == requests_per_thread * threads
    version = (("version", str(VERSION)),)
    assert samples[("trtserve_lean_runtime_loads_total", version)] == 1
    assert samples[("trtserve_lean_runtimes_loaded", version)] == 1


def test_server_refuses_a_missing_device_and_keeps_serving(
    two_gpu_server: TwoGpuServer, x: np.ndarray, expected: dict[int, bytes]
) -> None:
    count = cuda_device_count()
    proc = two_gpu_server.proc
    with InferenceClient(proc.address, timeout=180) as client:
        with pytest.raises(InferenceServerError) as raised:
            client.load_model(
                "conv_absent",
                config=model_config("conv_absent", [0, count]),
                files={"1/model.plan": (plans_dir() / PLAN_NAME).read_bytes()},
            )
        error = raised.value
        assert error.code.name == "FAILED_PRECONDITION", error
        assert f"CUDA device {count} does not exist" in error.message, error
        assert "conv_absent" in error.message, error
        assert not client.model_ready("conv_absent")
        assert client.model_ready("conv")
        out = client.infer("conv", [InferInput("x", x)]).as_numpy("output0")
    assert out.tobytes() == expected[0]
    assert proc.process.poll() is None
