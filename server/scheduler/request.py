"""A request as the scheduler sees it: validated inputs, what to return, and where to put it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from trtserve.server.runtime.tensor_buffers import DeviceArray, OutputTarget, PlacedOutput


@dataclass
class InferenceRequest:
    """Validated inputs of one request.

    When the model batches, every input's first dimension is this request's batch size.
    Inputs passed by reference are views of shared memory (numpy) or GPU memory (DeviceArray).
    """

    inputs: dict[str, np.ndarray | DeviceArray]
    output_names: tuple[str, ...]
    batch_size: int
    # time.monotonic() by which the request must start executing, or None.
    deadline: float | None = None
    # Outputs the client wants written into its shared memory instead of the reply.
    output_targets: dict[str, OutputTarget] = field(default_factory=dict)
    # Called once the scheduler holds no reference to the inputs any more (executed, dropped
    # or refused): shared memory they view may be unmapped only after that.
    on_release: Callable[[], None] | None = None

    @functools.cached_property
    def signature(self) -> tuple[tuple[str, np.dtype, tuple[int, ...]], ...]:
        """What must match for requests to share a batch: names, dtypes, non-batch shapes."""
        return tuple((name, a.dtype, tuple(a.shape[1:])) for name, a in sorted(self.inputs.items()))

    def release(self) -> None:
        """Run `on_release` (once)."""
        callback, self.on_release = self.on_release, None
        if callback is not None:
            callback()


@dataclass
class InferenceResponse:
    """Outputs of one request, split back from its batch.

    A PlacedOutput was written into the request's output target; only its shape travels on.
    """

    outputs: dict[str, np.ndarray | PlacedOutput]
    queue_ns: int
