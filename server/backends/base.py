"""The interface every backend implements.

A backend turns one model file into a ``LoadedModel`` (what the file declares) that creates
``ModelInstance``s: independent executors, each used by one scheduler worker thread at a time.
The scheduler packs requests into one batch per ``execute`` call; instances never see gRPC.
Tensors passed by reference reach a backend as host arrays (views of shared memory), and, for
backends that declare ``device_tensors``, as GPU memory (see runtime/tensor_buffers.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtserve.server.runtime.tensor_buffers import (
    NO_TARGETS,
    InputArray,
    PlacedOutput,
    RowTarget,
)
from trtserve.server.specs import DeviceKind, ModelIO, ModelSettings


@dataclass(frozen=True)
class Placement:
    """Where one instance runs: the CPU, or a GPU by CUDA device ordinal."""

    kind: DeviceKind
    device_id: int = 0
    # Index of this instance among the model's instances (0-based).
    index: int = 0

    @property
    def device(self) -> str:
        """The device as metrics label it: "cpu" or "gpu:<ordinal>"."""
        return "cpu" if self.kind is DeviceKind.CPU else f"gpu:{self.device_id}"


@dataclass(frozen=True)
class ExecutionTimings:
    """Nanoseconds spent moving inputs in, computing, and moving outputs out of one batch."""

    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass(frozen=True)
class ExecutionResult:
    """Outputs of one batch, each with the batch as its first dimension when batched.

    An output named in `placed` was written into every target given for it; it may come back
    as a PlacedOutput (nothing left to return) or, when some requests had no target, as the
    whole array.
    """

    outputs: Mapping[str, np.ndarray | PlacedOutput]
    timings: ExecutionTimings
    placed: frozenset[str] = frozenset()


class ModelInstance(ABC):
    """One executor of a model; `execute` is called from one thread at a time."""

    @abstractmethod
    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        """Run one batch. Inputs are validated and packed; return the named outputs.

        `targets` says where requests want outputs written instead of returned; a backend
        that does not write them leaves them out of `placed`, and the server copies.
        Only a model whose `device_tensors` is true receives DeviceArray or GatheredArray.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the instance's resources (sessions, contexts, streams, buffers)."""


class LoadedModel(ABC):
    """A model file loaded by a backend, ready to create instances."""

    @property
    @abstractmethod
    def io(self) -> ModelIO:
        """The tensors the model file declares."""

    @property
    def device_tensors(self) -> bool:
        """Whether instances take inputs in GPU memory (DeviceArray, GatheredArray)."""
        return False

    @abstractmethod
    def create_instance(self, placement: Placement) -> ModelInstance:
        """Create one instance at `placement`; raise a ServerError when that is impossible."""

    @abstractmethod
    def close(self) -> None:
        """Release what the model holds after all its instances are closed."""


class Backend(ABC):
    """Loads model files of one platform (`onnxruntime_onnx`, `tensorrt_plan`)."""

    platform: str
    default_filename: str

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """Whether this backend can load models here, and why not when it cannot."""

    @abstractmethod
    def load(self, path: Path, settings: ModelSettings) -> LoadedModel:
        """Load one model file; raise FailedPrecondition for a corrupt or unusable file."""

    def preload(self, versions: Sequence[str]) -> list[str]:
        """Load runtimes of these versions before any model needs them; the ones it loaded.

        Backends without separately loaded runtimes load nothing.
        """
        return []

    def close(self) -> None:
        """Release what the backend holds for the server's lifetime (after every model)."""
        # Not abstract: most backends hold nothing beyond their models.
        return None
