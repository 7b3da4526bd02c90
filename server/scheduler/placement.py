"""Outputs a backend returned, written into the targets their requests named.

Runs on the instance thread after the batch is split, so the copy of a large output into a
client's shared memory never holds up the event loop. Backends that write targets themselves
(TensorRT) leave nothing for this to do; BYTES outputs, which need the protocol's
serialization, are left to the data plane.
"""

from __future__ import annotations

from typing import TypeGuard

import numpy as np

from trtserve.server.runtime.cuda_copies import host_to_device
from trtserve.server.runtime.tensor_buffers import OutputTarget, PlacedOutput, check_fits


def placeable(array: np.ndarray | PlacedOutput) -> TypeGuard[np.ndarray]:
    """Whether `array` is numeric host data this module can write into a target."""
    return isinstance(array, np.ndarray) and array.dtype.kind != "O"


def place(name: str, array: np.ndarray, target: OutputTarget) -> PlacedOutput:
    """Write `array`'s bytes (C order) into `target`; InvalidArgument when they do not fit."""
    write(name, np.ascontiguousarray(array).reshape(-1).view(np.uint8), target)
    return PlacedOutput(array.dtype, tuple(array.shape))


def write(name: str, data: np.ndarray, target: OutputTarget) -> None:
    """Write the bytes `data` (uint8) of output `name` into `target`, host or GPU memory."""
    check_fits(name, target, data.nbytes)
    if target.host is not None:
        target.host[: data.nbytes] = data
    elif target.device is not None:
        host_to_device(data, target.device)
