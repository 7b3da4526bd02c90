"""The TensorRT backend on a GPU with the real 11.0.0.114 plan and its lean runtime.

Needs a CUDA device, tensorrt_dispatch, cuda-bindings, the plans (../shared/plans or
$TRTSERVE_TEST_PLANS) and lean runtime 11.0.0.114 installed in $TRTSERVE_RUNTIMES_DIR
(`trtserve runtimes install 11.0.0.114`). Skipped otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

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

from trtserve.server.backends.base import Placement
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.backends.tensorrt_model import TensorRTModel
from trtserve.server.errors import FailedPrecondition, Unavailable
from trtserve.server.runtime.cuda_device import cuda_device_count
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_header import TrtVersion
from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings

pytestmark = pytest.mark.gpu

_missing = requirements_missing()
if _missing:
    pytest.skip(_missing, allow_module_level=True)


def settings(name: str = "conv_relu", devices: tuple[int, ...] = (0,)) -> ModelSettings:
    return ModelSettings(
        name=name,
        platform="tensorrt_plan",
        instance_groups=(InstanceGroup(1, DeviceKind.GPU, devices),),
    )


def gpu(index: int = 0, device_id: int = 0) -> Placement:
    return Placement(DeviceKind.GPU, device_id=device_id, index=index)


@pytest.fixture(scope="module")
def backend() -> TensorRTBackend:
    return TensorRTBackend(store=LeanStore())


@pytest.fixture(scope="module")
def model(backend: TensorRTBackend) -> Iterator[TensorRTModel]:
    loaded = backend.load(plans_dir() / PLAN_NAME, settings())
    assert isinstance(loaded, TensorRTModel)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return seeded_input()


def test_io_is_derived_from_the_engine(model: TensorRTModel) -> None:
    io = model.io
    assert [(t.name, t.datatype, t.shape) for t in io.inputs] == [("x", "FP32", (1, 3, 224, 224))]
    assert [(t.name, t.datatype, t.shape) for t in io.outputs] == [
        ("output0", "FP32", (1, 16, 222, 222))
    ]
    assert io.max_batch_size == 0


def test_execute_matches_a_direct_tensorrt_run(model: TensorRTModel, x: np.ndarray) -> None:
    instance = model.create_instance(gpu())
    try:
        result = instance.execute({"x": x}, ["output0"])
    finally:
        instance.close()
    out = result.outputs["output0"]
    assert out.shape == (1, 16, 222, 222)
    assert out.dtype == np.float32
    assert (out >= 0).all()
    assert abs(float(out.max()) - 0.891) < 0.001
    assert result.timings.compute_infer_ns > 0
    assert result.timings.compute_input_ns > 0
    assert result.timings.compute_output_ns > 0
    expected = direct_run(x)
    assert out.tobytes() == expected.tobytes()


def test_instances_run_concurrently_with_equal_results(model: TensorRTModel, x: np.ndarray) -> None:
    instances = [model.create_instance(gpu(index=i)) for i in range(4)]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        for _ in range(20):
            out = instances[i].execute({"x": x}, ["output0"]).outputs["output0"]
        results[i] = out.tobytes()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for instance in instances:
        instance.close()
    assert len(results) == 4
    assert len(set(results.values())) == 1


def test_lean_runtime_is_held_while_the_model_lives(
    backend: TensorRTBackend, model: TensorRTModel
) -> None:
    assert backend.runtimes.loaded().get(VERSION, 0) >= 1


def test_missing_device_is_a_clear_error(model: TensorRTModel) -> None:
    count = cuda_device_count()
    with pytest.raises(FailedPrecondition, match=f"CUDA device {count} does not exist"):
        model.create_instance(gpu(device_id=count))


def test_plan_of_a_missing_version_is_unavailable(backend: TensorRTBackend) -> None:
    plan = plans_dir() / "conv_relu_trt10.0.1.6.plan"
    if backend.store.path_for(TrtVersion(10, 0, 1, 6)) is not None:
        pytest.skip("10.0.1.6 is installed here")
    with pytest.raises(Unavailable, match=r"runtimes install 10\.0\.1\.6"):
        backend.load(plan, settings("old"))


def test_wrong_dtype_is_refused(model: TensorRTModel, x: np.ndarray) -> None:
    from trtserve.server.errors import InvalidArgument

    instance = model.create_instance(gpu())
    try:
        with pytest.raises(InvalidArgument, match="expected datatype FP32"):
            instance.execute({"x": x.astype(np.float64)}, ["output0"])
    finally:
        instance.close()
