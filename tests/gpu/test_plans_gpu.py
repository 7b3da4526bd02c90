"""Plans that cannot run, and a plan that carries its own lean runtime, on a real GPU.

- The TensorRT 10.15.1.29 plan of ../shared/plans/more that was built on compute capability 8.6
  without hardware compatibility (and not version-compatible) is refused before TensorRT with
  that reason; TensorRT itself, given the chance through the lean runtime of its version,
  refuses it too (that test needs lean runtime 10.15.1.29 installed).
- A plan WITH an embedded lean runtime, made here by ../shared/gpu/make_embedded.py from the
  11.0.0.114 plan and its lean library: served when trusted by sha256 or by an ed25519
  signature (output equal to the lean-excluded plan's), refused when not trusted, and memory
  over 20 load/unload cycles (written to $TRTSERVE_GPU_MEMORY_REPORT when set).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from plan_fixtures import (
    PLAN_NAME,
    ROOT,
    VERSION,
    direct_run,
    plans_dir,
    requirements_missing,
    seeded_input,
)

from trtserve.server.backends.base import Placement
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.backends.tensorrt_model import DeserializationFailed, TensorRTModel
from trtserve.server.backends.tensorrt_probe import probe_plan
from trtserve.server.errors import FailedPrecondition
from trtserve.server.runtime.cuda_device import cuda_call, describe_device, require_cudart
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_header import TrtVersion
from trtserve.server.runtime.routing import RouteKind
from trtserve.server.runtime.trust import TrustPolicy, load_public_key, sha256_hex
from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings

pytestmark = pytest.mark.gpu

_missing = requirements_missing()
if _missing:
    pytest.skip(_missing, allow_module_level=True)

NOT_COMPATIBLE = "more/autoencoder_fp16_trt10.15.1.29_not_vc.plan"
NOT_COMPATIBLE_VERSION = TrtVersion(10, 15, 1, 29)
ENGINE_FAILURE = "Engine deserialization failed"
CYCLES = 20


def settings(name: str) -> ModelSettings:
    return ModelSettings(
        name=name,
        platform="tensorrt_plan",
        instance_groups=(InstanceGroup(1, DeviceKind.GPU, (0,)),),
    )


def plan_or_skip(name: str) -> Path:
    path = plans_dir() / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return seeded_input()


@pytest.fixture(scope="module")
def expected(x: np.ndarray) -> np.ndarray:
    return direct_run(x)


@pytest.fixture(scope="module")
def embedded_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real plan with a LEAN entry: the 11.0.0.114 plan plus its lean library (105 MB)."""
    script = next(
        (
            p
            for p in (
                plans_dir() / "make_embedded.py",
                ROOT / ".." / "shared" / "gpu" / "make_embedded.py",
            )
            if p.is_file()
        ),
        None,
    )
    if script is None:
        pytest.skip("make_embedded.py not found beside the plans or in ../shared/gpu")
    library = LeanStore().path_for(VERSION)
    assert library is not None
    out = tmp_path_factory.mktemp("embedded") / "model.plan"
    done = subprocess.run(
        [sys.executable, str(script), str(plans_dir() / PLAN_NAME), str(library), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out


def run_once(model: TensorRTModel, x: np.ndarray) -> np.ndarray:
    instance = model.create_instance(Placement(DeviceKind.GPU, 0, 0))
    output = instance.execute({"x": x}, ["output0"]).outputs["output0"]
    assert isinstance(output, np.ndarray)
    return output


@pytest.fixture
def loaded() -> Iterator[list[TensorRTModel]]:
    models: list[TensorRTModel] = []
    yield models
    for model in models:
        model.close()


def test_a_plan_for_another_gpu_is_refused_before_tensorrt_with_the_reason() -> None:
    path = plan_or_skip(NOT_COMPATIBLE)
    device = describe_device(0)
    if device.compute_capability == (8, 6):
        pytest.skip("this GPU is of the compute capability the plan was built for")
    backend = TensorRTBackend(store=LeanStore())
    with pytest.raises(FailedPrecondition) as caught:
        backend.load(path, settings("autoencoder"))
    message = str(caught.value)
    assert "compute capability 8.6 without hardware compatibility" in message, message
    assert device.describe() in message, message
    assert ENGINE_FAILURE not in message, message


def test_tensorrt_given_that_plan_refuses_it_too() -> None:
    """The refusal above is no false alarm: the lean runtime of the plan's version fails."""
    path = plan_or_skip(NOT_COMPATIBLE)
    library = LeanStore().path_for(NOT_COMPATIBLE_VERSION)
    if library is None:
        pytest.skip(f"lean runtime {NOT_COMPATIBLE_VERSION} is not installed")
    with pytest.raises(DeserializationFailed) as caught:
        probe_plan(path, library, 0)
    assert ENGINE_FAILURE in caught.value.tensorrt_said


def test_embedded_plan_trusted_by_sha256_serves_the_lean_excluded_output(
    embedded_plan: Path, x: np.ndarray, expected: np.ndarray, loaded: list[TensorRTModel]
) -> None:
    digest = sha256_hex(embedded_plan.read_bytes())
    backend = TensorRTBackend(store=LeanStore(), trust=TrustPolicy([digest]))
    model = backend.load(embedded_plan, settings("embedded"))
    assert isinstance(model, TensorRTModel)
    loaded.append(model)
    assert model.route.kind is RouteKind.EMBEDDED_LEAN
    assert model.route.trust is not None and "allowlist" in model.route.trust.reason
    assert run_once(model, x).tobytes() == expected.tobytes()


def test_embedded_plan_signed_with_an_ed25519_key_serves(
    embedded_plan: Path,
    tmp_path: Path,
    x: np.ndarray,
    expected: np.ndarray,
    loaded: list[TensorRTModel],
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    plan = tmp_path / "model.plan"
    shutil.copyfile(embedded_plan, plan)
    (tmp_path / "model.plan.sig").write_bytes(key.sign(plan.read_bytes()))
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    backend = TensorRTBackend(
        store=LeanStore(), trust=TrustPolicy(public_keys=[load_public_key(public)])
    )
    model = backend.load(plan, settings("signed"))
    assert isinstance(model, TensorRTModel)
    loaded.append(model)
    assert model.route.trust is not None and "signed by ed25519 key" in model.route.trust.reason
    assert run_once(model, x).tobytes() == expected.tobytes()


def test_untrusted_embedded_plan_is_refused(embedded_plan: Path) -> None:
    backend = TensorRTBackend(store=LeanStore())
    with pytest.raises(FailedPrecondition, match=r"carries host code .* not trusted"):
        backend.load(embedded_plan, settings("untrusted"))


def test_embedded_plan_memory_over_load_and_unload_cycles(
    embedded_plan: Path, x: np.ndarray, expected: np.ndarray
) -> None:
    """Each deserialization of such a plan loads its own copy of the lean library: measured."""
    rt = require_cudart()
    digest = sha256_hex(embedded_plan.read_bytes())
    # No probe process: what is measured is this process's memory.
    backend = TensorRTBackend(store=LeanStore(), trust=TrustPolicy([digest]), probe_plans=False)

    def sample(cycle: int) -> dict[str, float]:
        free, total = cuda_call("cudaMemGetInfo", rt.cudaMemGetInfo)
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return {
            "cycle": cycle,
            "rss_mib": resident_pages * resource.getpagesize() / (1 << 20),
            "gpu_used_mib": (total - free) / (1 << 20),
        }

    samples = [sample(0)]
    for cycle in range(1, CYCLES + 1):
        model = backend.load(embedded_plan, settings(f"cycle{cycle}"))
        assert isinstance(model, TensorRTModel)
        try:
            assert run_once(model, x).tobytes() == expected.tobytes()
        finally:
            model.close()
        samples.append(sample(cycle))
    growth = {
        "rss_mib_per_cycle_after_the_first": (samples[-1]["rss_mib"] - samples[1]["rss_mib"])
        / (CYCLES - 1),
        "gpu_mib_per_cycle_after_the_first": (
            samples[-1]["gpu_used_mib"] - samples[1]["gpu_used_mib"]
        )
        / (CYCLES - 1),
    }
    print(json.dumps({"growth": growth, "samples": samples}))
    report = os.environ.get("TRTSERVE_GPU_MEMORY_REPORT")
    if report:
        Path(report).write_text(json.dumps({"growth": growth, "samples": samples}, indent=2))
