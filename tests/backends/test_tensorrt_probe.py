"""The plan probe runs TensorRT in a child process and turns any failure into a clear error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trtserve.server.backends.tensorrt_probe import CHILD_MODULE, probe_plan
from trtserve.server.errors import FailedPrecondition
from trtserve.server.runtime.cuda_device import cuda_device_count


@pytest.mark.skipif(cuda_device_count() > 0, reason="checks the path without a GPU")
def test_probe_failure_in_the_child_is_a_failed_precondition(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"ftrt not really a plan")
    # Without a GPU the child cannot create a runtime: it fails, and the parent survives to
    # report it with the plan's path.
    with pytest.raises(FailedPrecondition, match=r"model\.plan: TensorRT could not deserialize"):
        probe_plan(plan, None, device_id=0, timeout_s=60)


def test_the_child_the_probe_runs_is_a_module_here() -> None:
    # A wrong name would fail every probe as a refused plan, which the test above cannot tell.
    assert importlib.util.find_spec(CHILD_MODULE) is not None


def test_a_prefixed_error_keeps_its_class_and_attributes() -> None:
    from trtserve.server.backends.tensorrt_model import DeserializationFailed, prefixed
    from trtserve.server.runtime.cuda_device import CudaError

    failed = prefixed(DeserializationFailed("plan.plan: no engine", "Engine failed"), "m")
    assert isinstance(failed, DeserializationFailed)
    assert str(failed) == "model 'm': plan.plan: no engine"
    assert failed.tensorrt_said == "Engine failed"
    cuda = prefixed(CudaError("CUDA cudaMalloc failed", "cudaErrorMemoryAllocation"), "m")
    assert isinstance(cuda, CudaError) and cuda.status == "cudaErrorMemoryAllocation"
    assert str(cuda) == "model 'm': CUDA cudaMalloc failed"
