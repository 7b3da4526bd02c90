"""CUDA devices through NVIDIA's `cuda-bindings`, imported only when first needed.

Every CUDA runtime call returns a status first; `cuda_call` checks it and raises `CudaError`
naming the call, so no failed copy or allocation passes silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from trtserve.server.errors import FailedPrecondition, Internal


class CudaError(Internal):
    """A CUDA runtime call failed; `status` is its cudaError_t name."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


def cudart() -> Any | None:
    """The `cuda.bindings.runtime` module, or None when cuda-bindings is not installed."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return None


def require_cudart() -> Any:
    module = cudart()
    if module is None:
        raise FailedPrecondition(
            "CUDA: the cuda-bindings package is not installed (pip install 'trtserve[tensorrt]')"
        )
    return module


def cuda_device_count() -> int:
    """How many CUDA devices this process sees; 0 without cuda-bindings, driver or device."""
    module = cudart()
    if module is None:
        return 0
    try:
        err, count = module.cudaGetDeviceCount()
    except Exception:  # a broken driver install must read as "no GPU", not crash a caller
        return 0
    if _code(err) != 0 or count is None:
        return 0
    return int(count)


def check_cuda(err: Any, what: str) -> None:
    """Raise CudaError when `err` (a cudaError_t or int) is not cudaSuccess."""
    code = _code(err)
    if code == 0:
        return
    name, text = _describe(err, code)
    raise CudaError(f"CUDA {what} failed: {name} ({code}): {text}", name)


def cuda_call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call one CUDA runtime function and check its status.

    Returns None for calls that give only a status, the value for one result, else a tuple.
    """
    result = fn(*args)
    if not isinstance(result, tuple):
        check_cuda(result, what)
        return None
    check_cuda(result[0], what)
    values = result[1:]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def require_device(device_id: int) -> None:
    """FailedPrecondition unless `device_id` names a visible CUDA device."""
    count = cuda_device_count()
    if not 0 <= device_id < count:
        raise FailedPrecondition(
            f"CUDA device {device_id} does not exist: this process sees {count} device(s)"
            + (f" (ids 0..{count - 1})" if count else "")
        )


@dataclass(frozen=True)
class DeviceDescription:
    """What a plan's compatibility is checked against: a device's name and compute capability."""

    device_id: int
    name: str
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"device {self.device_id} ({self.name}, compute capability {major}.{minor})"


def describe_device(device_id: int) -> DeviceDescription:
    """The name and compute capability of a visible device (see require_device)."""
    rt = require_cudart()
    props = cuda_call(
        f"cudaGetDeviceProperties({device_id})", rt.cudaGetDeviceProperties, device_id
    )
    name = _text(props.name).split("\x00", 1)[0].strip() or "unnamed GPU"
    return DeviceDescription(device_id, name, (int(props.major), int(props.minor)))


@contextmanager
def use_device(device_id: int) -> Iterator[None]:
    """Make `device_id` current for the calling thread, and restore the previous one after."""
    rt = require_cudart()
    previous = cuda_call("cudaGetDevice", rt.cudaGetDevice)
    if previous != device_id:
        cuda_call(f"cudaSetDevice({device_id})", rt.cudaSetDevice, device_id)
    try:
        yield
    finally:
        if previous != device_id:
            cuda_call(f"cudaSetDevice({previous})", rt.cudaSetDevice, previous)


def _code(err: Any) -> int:
    value = getattr(err, "value", err)
    return int(value)


def _describe(err: Any, code: int) -> tuple[str, str]:
    name = getattr(err, "name", None) or f"cudaError {code}"
    module = cudart()
    if module is None:
        return name, "no description (cuda-bindings not installed)"
    try:
        status = module.cudaError_t(code)
        _, raw_name = module.cudaGetErrorName(status)
        _, raw_text = module.cudaGetErrorString(status)
    except Exception:  # an unknown status number still gets a message
        return name, "unknown CUDA status"
    return _text(raw_name) or name, _text(raw_text) or "unknown CUDA status"


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")
