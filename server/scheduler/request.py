"""A request as the scheduler sees it: validated numpy inputs and what to return."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass
class InferenceRequest:
    """Validated inputs of one request.

    When the model batches, every input's first dimension is this request's batch size.
    """

    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    batch_size: int
    # time.monotonic() by which the request must start executing, or None.
    deadline: float | None = None

    @functools.cached_property
    def signature(self) -> tuple[tuple[str, np.dtype, tuple[int, ...]], ...]:
        """What must match for requests to share a batch: names, dtypes, non-batch shapes."""
        return tuple((name, a.dtype, a.shape[1:]) for name, a in sorted(self.inputs.items()))


@dataclass
class InferenceResponse:
    """Outputs of one request, split back from its batch."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
