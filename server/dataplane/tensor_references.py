"""Tensors passed by reference: a region, an offset and a byte size, resolved to memory.

Transports parse the three parameters (`shared_memory_region`, `shared_memory_offset`,
`shared_memory_byte_size`) into a TensorReference; this module turns a reference into what the
scheduler takes: a numpy view of system shared memory, a DeviceArray of CUDA shared memory, or
an OutputTarget, and writes outputs that a backend returned instead of placing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtserve.protocol import datatypes, tensors
from trtserve.server.dataplane.cuda_region import CudaRegion
from trtserve.server.dataplane.shared_memory import Lease
from trtserve.server.errors import InvalidArgument
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    OutputTarget,
    PlacedOutput,
)
from trtserve.server.scheduler.placement import write

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"


@dataclass(frozen=True)
class TensorReference:
    """`byte_size` bytes at `offset` of the registered region `region`."""

    region: str
    offset: int
    byte_size: int


def expected_bytes(datatype: str, shape: Sequence[int]) -> int | None:
    """Bytes a tensor of this datatype and shape takes; None for BYTES (length-prefixed)."""
    if datatype == "BYTES":
        return None
    return tensors.element_count(shape) * datatypes.from_name(datatype).dtype.itemsize


def check_input_size(
    model: str, name: str, datatype: str, shape: Sequence[int], reference: TensorReference
) -> None:
    """InvalidArgument unless the reference's byte size is what the shape and datatype take."""
    expected = expected_bytes(datatype, shape)
    if expected is not None and reference.byte_size != expected:
        raise InvalidArgument(
            f"input '{name}' of model '{model}': {BYTE_SIZE}: expected {expected} bytes for "
            f"{datatype} shape {list(shape)}, received {reference.byte_size}"
        )


def input_array(
    lease: Lease, name: str, reference: TensorReference, datatype: str, shape: Sequence[int]
) -> np.ndarray | DeviceArray:
    """The input's data where the client put it: a read-only view, or GPU memory."""
    field = f"input '{name}'"
    region = lease.region(reference.region)
    dt = datatypes.from_name(datatype)
    if isinstance(region, CudaRegion):
        if datatype == "BYTES":
            raise InvalidArgument(
                f"{field}: BYTES tensors cannot be read from CUDA shared memory; expected a "
                f"system shared-memory region or inline data, received region '{region.name}'"
            )
        return region.array(reference.offset, reference.byte_size, dt.dtype, tuple(shape), field)
    raw = region.view(reference.offset, reference.byte_size, field)
    if datatype == "BYTES":
        try:
            return tensors.deserialize_bytes(name, raw.data, tensors.element_count(shape)).reshape(
                tuple(shape)
            )
        except tensors.TensorDataError as error:
            raise InvalidArgument(str(error)) from None
    array = raw.view(dt.dtype).reshape(tuple(shape))
    if not array.flags.aligned:
        # An offset that breaks the element alignment: backends need aligned data.
        array = array.copy()
    array.flags.writeable = False
    return array


def output_target(lease: Lease, name: str, reference: TensorReference) -> OutputTarget:
    """Where the client wants output `name` written."""
    field = f"requested output '{name}'"
    region = lease.region(reference.region)
    if isinstance(region, CudaRegion):
        memory = region.memory(reference.offset, reference.byte_size, field)
        return OutputTarget(region.name, reference.byte_size, device=memory)
    view = region.view(reference.offset, reference.byte_size, field)
    return OutputTarget(region.name, reference.byte_size, host=view)


def place_outputs(
    outputs: dict[str, np.ndarray | PlacedOutput],
    targets: Mapping[str, OutputTarget],
    datatypes_by_name: Mapping[str, datatypes.Datatype],
) -> None:
    """Write the outputs a backend returned into their targets; mark them placed."""
    for name, target in targets.items():
        value = outputs.get(name)
        if value is None or isinstance(value, PlacedOutput):
            continue
        data = np.frombuffer(tensors.raw_view(value, datatypes_by_name.get(name)), np.uint8)
        write(name, data, target)
        outputs[name] = PlacedOutput(value.dtype, tuple(value.shape))
