"""Where each tensor of one TensorRT execution lives: bound in place, copied, or staged.

Decided from addresses, shapes and alignment alone, before any CUDA call, so that every
decision is tested without a GPU; the instance then carries a plan out on its stream.

- An input in GPU memory on the instance's device, aligned, is read by the engine where it is.
  Other GPU inputs are copied device to device into the instance's buffer.
- A host input in pinned memory (a registered system shared-memory region) is copied to the
  device straight from where it is. Other host inputs are first copied by the CPU into the
  instance's pinned staging buffer, since an asynchronous copy from pageable memory is not.
- A gathered input (several requests' parts) is assembled part by part in the instance's
  buffer, each part at its byte offset.
- An output with a single target in GPU memory that takes the whole output, on the instance's
  device and aligned, is written there by the engine. Other targets get their rows copied
  after the engine ran; rows that no target takes come back through the staging buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from trtserve.server.errors import Internal
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    GatheredArray,
    InputArray,
    OutputTarget,
    RowTarget,
    check_fits,
)

# TensorRT wants I/O tensor addresses aligned to 256 bytes (cudaMalloc's alignment).
ALIGNMENT = 256

# The records of a plan are made anew for every execution and never changed after; they are
# not frozen dataclasses because those cost several times more to construct, on every request.


class CopyKind(Enum):
    """The direction of one cudaMemcpyAsync."""

    HOST_TO_DEVICE = "host to device"
    # Also between devices: the instance copies with cudaMemcpyDefault (unified addressing).
    DEVICE_TO_DEVICE = "device to device"
    DEVICE_TO_HOST = "device to host"


@dataclass(slots=True)
class Copy:
    """`nbytes` from `src` to `dst`, on the instance's stream; `what` names it in errors."""

    dst: int
    src: int
    nbytes: int
    kind: CopyKind
    what: str


@dataclass(slots=True)
class Stage:
    """Host bytes the CPU copies to `dst` in the pinned staging buffer, before their H2D copy."""

    array: np.ndarray
    dst: int


@dataclass(frozen=True)
class OwnBuffers:
    """One tensor's buffers in the instance: on the device, and the pinned host staging one."""

    device: int
    host: int


@dataclass(slots=True)
class InputPlan:
    """The address the engine reads an input from, and what fills it first."""

    address: int
    stages: tuple[Stage, ...]
    copies: tuple[Copy, ...]


@dataclass(slots=True)
class OutputPlan:
    """The address the engine writes an output to, and the copies that follow the engine.

    `placed`: targets were given and the plan writes every one of them. `returned`: some rows
    had no target, so the whole output is also copied to the staging buffer and comes back.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    address: int
    copies: tuple[Copy, ...]
    placed: bool
    returned: bool


def host_address(array: np.ndarray) -> int:
    """Where a host array's first byte is."""
    return int(array.ctypes.data)


def plan_input(
    name: str,
    array: InputArray,
    device_id: int,
    own: OwnBuffers,
    pinned: Callable[[int, int], bool] | None,
) -> InputPlan:
    """How input `name` reaches the engine on `device_id`.

    `pinned(address, nbytes)` says whether host bytes are page-locked; None when nothing is,
    which spares the plain path asking numpy for every array's address.
    """
    what = f"input '{name}'"
    if isinstance(array, DeviceArray):
        if array.device_id == device_id and array.address % ALIGNMENT == 0:
            return InputPlan(array.address, (), ())
        copy = Copy(own.device, array.address, array.nbytes, CopyKind.DEVICE_TO_DEVICE, what)
        return InputPlan(own.device, (), (copy,) if copy.nbytes else ())
    parts = array.parts if isinstance(array, GatheredArray) else (array,)
    stages: list[Stage] = []
    copies: list[Copy] = []
    offset = 0
    for part in parts:
        nbytes = int(part.nbytes)
        if nbytes == 0:
            continue
        dst = own.device + offset
        if isinstance(part, DeviceArray):
            copies.append(Copy(dst, part.address, nbytes, CopyKind.DEVICE_TO_DEVICE, what))
        elif pinned is not None and part.flags.c_contiguous and pinned(host_address(part), nbytes):
            copies.append(Copy(dst, host_address(part), nbytes, CopyKind.HOST_TO_DEVICE, what))
        else:
            stages.append(Stage(part, own.host + offset))
            copies.append(Copy(dst, own.host + offset, nbytes, CopyKind.HOST_TO_DEVICE, what))
        offset += nbytes
    return InputPlan(own.device, tuple(stages), coalesce(copies))


def plan_output(
    name: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    targets: Sequence[RowTarget],
    device_id: int,
    own: OwnBuffers,
) -> OutputPlan:
    """Where output `name` of `shape` is written, and where its rows are copied after.

    InvalidArgument (check_fits) when a target has no room for its rows.
    """
    total = math.prod(shape) * dtype.itemsize
    back = Copy(own.host, own.device, total, CopyKind.DEVICE_TO_HOST, f"output '{name}'")
    if not targets:
        return OutputPlan(dtype, shape, own.device, (back,) if total else (), False, True)
    spans = [_span(name, shape, total, t) for t in targets]
    for (_, nbytes), t in zip(spans, targets, strict=True):
        check_fits(name, t.target, nbytes)
    whole = _covers_every_row(shape, targets)
    only = targets[0].target
    if len(targets) == 1 and whole and _bindable(only, device_id):
        assert only.device is not None
        return OutputPlan(dtype, shape, only.device.address, (), True, False)
    copies = [
        _copy_to(name, t.target, own.device + start, nbytes)
        for (start, nbytes), t in zip(spans, targets, strict=True)
        if nbytes
    ]
    if not whole and total:
        copies.append(back)
    return OutputPlan(dtype, shape, own.device, tuple(copies), True, not whole)


def coalesce(copies: Sequence[Copy]) -> tuple[Copy, ...]:
    """Merge copies that continue one another (parts staged side by side) into one."""
    merged: list[Copy] = []
    for copy in copies:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.kind is copy.kind
            and last.dst + last.nbytes == copy.dst
            and last.src + last.nbytes == copy.src
        ):
            merged[-1] = Copy(last.dst, last.src, last.nbytes + copy.nbytes, last.kind, last.what)
        else:
            merged.append(copy)
    return tuple(merged)


def _span(name: str, shape: tuple[int, ...], total: int, target: RowTarget) -> tuple[int, int]:
    """(byte offset, bytes) of the rows `target` takes."""
    if target.rows is None:
        return 0, total
    if not shape or target.first_row < 0 or target.first_row + target.rows > shape[0]:
        raise Internal(
            f"output '{name}': rows {target.first_row}..{target.first_row + target.rows} of a "
            f"target lie outside the output's shape {list(shape)}"
        )
    row_bytes = total // shape[0] if shape[0] else 0
    return target.first_row * row_bytes, target.rows * row_bytes


def _covers_every_row(shape: tuple[int, ...], targets: Sequence[RowTarget]) -> bool:
    """Whether the targets together take all rows, so no row of the output comes back."""
    if any(t.rows is None for t in targets):
        return True
    reached = 0
    for t in sorted(targets, key=lambda t: t.first_row):
        if t.first_row > reached:
            return False
        reached = max(reached, t.first_row + (t.rows or 0))
    return reached >= shape[0]


def _bindable(target: OutputTarget, device_id: int) -> bool:
    device = target.device
    return device is not None and device.device_id == device_id and device.address % ALIGNMENT == 0


def _copy_to(name: str, target: OutputTarget, src: int, nbytes: int) -> Copy:
    what = f"output '{name}' to shared-memory region '{target.region}'"
    if target.device is not None:
        return Copy(target.device.address, src, nbytes, CopyKind.DEVICE_TO_DEVICE, what)
    view = target.host
    if view is None or not view.flags.c_contiguous or not view.flags.writeable:
        raise Internal(f"{what}: the target is neither GPU memory nor a writable host view")
    return Copy(host_address(view), src, nbytes, CopyKind.DEVICE_TO_HOST, what)
