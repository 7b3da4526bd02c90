"""Records the client sends and returns: inputs, results, metadata and statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from trtserve.protocol.datatypes import from_numpy


@dataclass
class InferInput:
    """One input tensor; `datatype` defaults to the v2 datatype of `data.dtype`.

    BF16 takes uint16 bit patterns or float32 values (rounded to nearest even).
    """

    name: str
    data: np.ndarray
    datatype: str | None = None

    @property
    def resolved_datatype(self) -> str:
        """The v2 datatype sent on the wire."""
        return self.datatype if self.datatype is not None else from_numpy(self.data.dtype).name


@dataclass(frozen=True)
class SharedMemoryInput:
    """An input passed by reference: its data lies in a registered shared-memory region.

    `byte_size` bytes at `offset` of region `region` (the name it was registered under) hold
    the tensor's raw data (BYTES: length-prefixed elements).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    region: str
    byte_size: int
    offset: int = 0


@dataclass(frozen=True)
class SharedMemoryOutput:
    """A requested output that the server writes into `byte_size` bytes at `offset` of `region`.

    The result then lists it in `InferResult.shared_memory_outputs` (datatype and shape); read
    the data from the region. For `infer`; `stream_infer` takes output names only.
    """

    name: str
    region: str
    byte_size: int
    offset: int = 0


@dataclass
class InferRequest:
    """One inference request, as `stream_infer` takes them."""

    model: str
    inputs: Sequence[InferInput]
    outputs: Sequence[str] | None = None
    version: str = ""
    request_id: str = ""


@dataclass
class InferResult:
    """A response's output arrays by name (numeric ones are read-only views of the message).

    Outputs the server wrote into shared memory are not in `outputs`, but in
    `shared_memory_outputs` with their datatype and shape.
    """

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    shared_memory_outputs: dict[str, TensorMetadata] = field(default_factory=dict)

    def as_numpy(self, name: str) -> np.ndarray:
        """The output called `name`; KeyError names the outputs the response holds."""
        try:
            return self.outputs[name]
        except KeyError:
            if name in self.shared_memory_outputs:
                raise KeyError(
                    f"output {name!r} was written into shared memory; read it from the region "
                    f"({self.shared_memory_outputs[name]})"
                ) from None
            raise KeyError(
                f"output {name!r} is not in the response of model {self.model_name!r}; "
                f"received {sorted(self.outputs)}"
            ) from None


@dataclass(frozen=True)
class TensorMetadata:
    """A model tensor: datatype and shape, -1 for a variable dimension (the batch included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """A model's ModelMetadata answer."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True)
class ServerMetadata:
    """The server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelIndexEntry:
    """One model (version) in the repository index, with its state and the reason for it."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class Duration:
    """A count of events and their total time in nanoseconds."""

    count: int = 0
    ns: int = 0

    @property
    def mean_ms(self) -> float:
        """Mean time per event in milliseconds (0.0 when there were none)."""
        return self.ns / self.count / 1e6 if self.count else 0.0


@dataclass(frozen=True)
class BatchStatistics:
    """Compute times of the executions that ran one batch size."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class ModelStatistics:
    """A summary of one model version's ModelStatistics entry."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batch_stats: tuple[BatchStatistics, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SystemRegionStatus:
    """A registered system shared-memory region: `byte_size` bytes at `offset` of object `key`."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class CudaRegionStatus:
    """A registered CUDA shared-memory region: `byte_size` bytes on GPU `device_id`."""

    name: str
    device_id: int
    byte_size: int


@dataclass(frozen=True)
class UploadResult:
    """Where an uploaded model file was stored, and its size and sha256 as the server saw them."""

    model_name: str
    version: int
    stored_bytes: int
    sha256: str
