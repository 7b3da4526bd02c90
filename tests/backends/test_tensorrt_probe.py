"""The plan probe runs TensorRT in a child process and turns any failure into a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtserve.server.backends.tensorrt_probe import probe_plan
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
