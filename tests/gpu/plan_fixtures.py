"""What the GPU tests share: where the real plans are, what they need, and TensorRT run directly.

The plans are built elsewhere (../shared/plans, or $TRTSERVE_TEST_PLANS); lean runtimes come
from $TRTSERVE_RUNTIMES_DIR. Nothing here imports tritonclient.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtserve.server.runtime.cuda_device import cuda_device_count
from trtserve.server.runtime.lean_store import ENV_RUNTIMES_DIR, LeanStore
from trtserve.server.runtime.plan_header import TrtVersion

ROOT = Path(__file__).resolve().parents[2]
PLAN_NAME = "conv_relu_trt11.0.0.114.plan"
OLD_PLAN_NAME = "conv_relu_trt10.0.1.6.plan"
VERSION = TrtVersion(11, 0, 0, 114)
INPUT_SHAPE = (1, 3, 224, 224)
OUTPUT_SHAPE = (1, 16, 222, 222)


def plans_dir() -> Path:
    configured = os.environ.get("TRTSERVE_TEST_PLANS")
    if configured:
        return Path(configured).resolve()
    return (ROOT / ".." / "shared" / "plans").resolve()


def requirements_missing(
    modules: Sequence[str] = ("tensorrt_dispatch",),
    devices: int = 1,
    plans: Sequence[str] = (PLAN_NAME,),
) -> str:
    """Why these GPU tests cannot run here, or "" when they can."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    count = cuda_device_count()
    if count < devices:
        return f"{devices} CUDA device(s) needed, {count} visible"
    for name in plans:
        if not (plans_dir() / name).is_file():
            return f"{name} not found in {plans_dir()}"
    if not os.environ.get(ENV_RUNTIMES_DIR):
        return f"{ENV_RUNTIMES_DIR} is not set"
    if LeanStore().path_for(VERSION) is None:
        return f"lean runtime {VERSION} is not installed in ${ENV_RUNTIMES_DIR}"
    return ""


def seeded_input() -> np.ndarray:
    """The input every GPU test sends."""
    np.random.seed(0)
    return np.random.rand(*INPUT_SHAPE).astype(np.float32) - 0.5


def direct_run(x: np.ndarray, device_id: int = 0) -> np.ndarray:
    """The plan run with tensorrt_dispatch, its lean runtime and cuda-bindings: no trtserve code."""
    import tensorrt_dispatch as trt
    from cuda.bindings import runtime as cudart

    def ok(result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        assert int(err) == 0, f"CUDA error {err}"
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    library = LeanStore().path_for(VERSION)
    assert library is not None
    previous = ok(cudart.cudaGetDevice())
    ok(cudart.cudaSetDevice(device_id))
    logger = trt.Logger(trt.Logger.WARNING)
    dispatch = trt.Runtime(logger)
    lean = dispatch.load_runtime(str(library))
    assert lean is not None, f"load_runtime({library}) failed"
    engine = lean.deserialize_cuda_engine((plans_dir() / PLAN_NAME).read_bytes())
    assert engine is not None, "the lean runtime did not deserialize the plan"
    context = engine.create_execution_context()
    out = np.empty(OUTPUT_SHAPE, dtype=np.float32)
    stream = ok(cudart.cudaStreamCreate())
    d_in = ok(cudart.cudaMalloc(x.nbytes))
    d_out = ok(cudart.cudaMalloc(out.nbytes))
    h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    try:
        ok(cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, h2d))
        assert context.set_tensor_address("x", int(d_in))
        assert context.set_tensor_address("output0", int(d_out))
        assert context.execute_async_v3(int(stream))
        ok(cudart.cudaStreamSynchronize(stream))
        ok(cudart.cudaMemcpy(out.ctypes.data, d_out, out.nbytes, d2h))
    finally:
        ok(cudart.cudaFree(d_in))
        ok(cudart.cudaFree(d_out))
        ok(cudart.cudaStreamDestroy(stream))
        # Engines before the runtime that made them.
        del context, engine, lean, dispatch
        ok(cudart.cudaSetDevice(previous))
    return out
