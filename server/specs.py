"""Records that describe a model: its tensors and its serving settings.

They are shared by every layer, from the repository (which parses them from config files) to
the backends (which report the tensors a model file really has).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: v2 datatype name and shape, -1 for a variable dimension.

    `reshape`, when the config gives one, is the shape the model itself has: clients send and
    receive `shape`, the model is given and gives `reshape` (Triton's ModelTensorReshape).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    reshape: tuple[int, ...] | None = None

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The shape as the model file has it (without a batch dimension when batched)."""
        return self.shape if self.reshape is None else self.reshape


@dataclass(frozen=True)
class ModelIO:
    """The tensors a loaded model file declares, shapes as the model sees them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Largest first dimension accepted when dimension 0 is a batch dimension, -1 when
    # unbounded, 0 when the model has no batch dimension.
    max_batch_size: int


class DeviceKind(StrEnum):
    """Where a model instance runs."""

    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class InstanceGroup:
    """`count` instances of a model on each listed device (GPUs), or on the CPU."""

    count: int = 1
    kind: DeviceKind = DeviceKind.CPU
    device_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class BatchingSettings:
    """Dynamic batcher settings; `enabled` is False for one-by-one execution."""

    enabled: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    # 0 means the server's default limit.
    max_queue_size: int = 0


class PolicyKind(StrEnum):
    """Triton's three version policies."""

    LATEST = "latest"
    ALL = "all"
    SPECIFIC = "specific"


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served, as Triton's `version_policy` says: the `count`
    newest (`latest`, one by default), every one (`all`), or exactly `versions` (`specific`)."""

    kind: PolicyKind = PolicyKind.LATEST
    count: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, available: Sequence[int]) -> list[int]:
        """The versions of `available` this policy serves, newest first."""
        newest_first = sorted(set(available), reverse=True)
        if self.kind is PolicyKind.LATEST:
            return newest_first[: self.count]
        if self.kind is PolicyKind.ALL:
            return newest_first
        return sorted(set(self.versions), reverse=True)

    def describe(self) -> str:
        if self.kind is PolicyKind.LATEST:
            return "the newest version" if self.count == 1 else f"the {self.count} newest versions"
        if self.kind is PolicyKind.ALL:
            return "every version"
        return "versions " + ", ".join(str(v) for v in sorted(self.versions))


@dataclass(frozen=True)
class WarmupInput:
    """One input of a warmup sample: its datatype and shape, and where its data comes from:
    zeros, random values, or a file in the model's `warmup/` folder (raw tensor bytes)."""

    datatype: str
    shape: tuple[int, ...]
    source: str  # "zero", "random" or "file"
    file: str = ""


@dataclass(frozen=True)
class WarmupSample:
    """Triton's model_warmup entry: requests run on every instance before a version serves.

    `batch_size` 0 means the model does not batch: shapes are sent as they are."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[tuple[str, WarmupInput], ...]


@dataclass(frozen=True)
class ModelSettings:
    """A model's configuration, parsed from its config file or an API load request."""

    name: str
    platform: str
    # 0: requests are not batched and their shapes include every dimension.
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    default_model_filename: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    warmups: tuple[WarmupSample, ...] = ()
