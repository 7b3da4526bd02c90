"""The interface every backend implements.

A backend turns one model file into a ``LoadedModel`` (what the file declares) that creates
``ModelInstance``s: independent executors, each used by one scheduler worker thread at a time.
The scheduler packs requests into one batch per ``execute`` call; instances never see gRPC.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    """Outputs of one batch, each with the batch as its first dimension when batched."""

    outputs: dict[str, np.ndarray]
    timings: ExecutionTimings


class ModelInstance(ABC):
    """One executor of a model; `execute` is called from one thread at a time."""

    @abstractmethod
    def execute(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> ExecutionResult:
        """Run one batch. Inputs are validated and packed; return the named outputs."""

    @abstractmethod
    def close(self) -> None:
        """Release the instance's resources (sessions, contexts, streams, buffers)."""


class LoadedModel(ABC):
    """A model file loaded by a backend, ready to create instances."""

    @property
    @abstractmethod
    def io(self) -> ModelIO:
        """The tensors the model file declares."""

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
