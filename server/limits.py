"""Limits on what one request may ask of the server, each refused with RESOURCE_EXHAUSTED.

A breach is answered at once, before the server allocates for it: a limit that queued the
excess instead would turn a burst into memory growth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import prod

from trtserve.server.errors import InvalidArgument, ResourceExhausted


class ConcurrencyLimit:
    """At most `limit` holders at once; one more is refused, not queued.

    Used from the event loop only, so the counter needs no lock.
    """

    def __init__(self, limit: int, what: str, setting: str) -> None:
        if limit < 1:
            raise ValueError(f"{setting}: expected a positive integer, received {limit}")
        self.limit = limit
        self.what = what
        self.setting = setting
        self.in_use = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the block, or raise ResourceExhausted."""
        if self.in_use >= self.limit:
            raise ResourceExhausted(
                f"{self.what}: expected at most {self.limit} at once ({self.setting}), "
                f"received one more while {self.in_use} are in progress; retry later"
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


@dataclass(frozen=True)
class RequestLimits:
    """The per-request limits the API layer enforces (message size is gRPC's own)."""

    max_tensor_elements: int
    max_upload_bytes: int
    uploads: ConcurrencyLimit
    max_bytes_elements: int
    upload_idle_timeout_s: float
    # Requests of one ModelStreamInfer stream read but not yet answered; at the cap the
    # stream is not read further (back-pressure, not refusal).
    max_stream_in_flight: int

    @classmethod
    def create(
        cls,
        max_tensor_elements: int,
        max_upload_bytes: int,
        max_concurrent_uploads: int,
        max_bytes_elements: int,
        upload_idle_timeout_s: float,
        max_stream_in_flight: int,
    ) -> RequestLimits:
        """Limits with a fresh upload counter."""
        uploads = ConcurrencyLimit(
            max_concurrent_uploads, "model uploads in progress", "max_concurrent_uploads"
        )
        return cls(
            max_tensor_elements,
            max_upload_bytes,
            uploads,
            max_bytes_elements,
            upload_idle_timeout_s,
            max_stream_in_flight,
        )


def check_tensor_elements(model: str, tensor: str, shape: Sequence[int], limit: int) -> int:
    """Refuse a tensor shape with more than `limit` elements (Python ints: no overflow).

    Returns the element count.
    """
    count = prod(map(int, shape))
    if count > limit:
        raise ResourceExhausted(
            f"input '{tensor}' of model '{model}': expected at most {limit} elements "
            f"(max_tensor_elements), received shape {list(shape)} = {count} elements"
        )
    return count


def check_dimensions(model: str, tensor: str, shape: Sequence[int], limit: int) -> None:
    """Refuse a dimension over `limit` even where another is 0: no tensor can use it, and
    numpy cannot make an array of such a shape, empty or not."""
    for index, size in enumerate(shape):
        if size > limit:
            raise InvalidArgument(
                f"input '{tensor}' of model '{model}': dimension {index} of shape {list(shape)} "
                f"is {size}, expected at most {limit} (max_tensor_elements)"
            )


def check_bytes_elements(model: str, counts: Mapping[str, int], limit: int) -> None:
    """Refuse a request whose BYTES inputs hold more than `limit` elements in all.

    Each BYTES element becomes at least one Python object (ONNX Runtime takes its strings as
    such), about 100 bytes apiece against 5 on the wire.
    """
    total = sum(counts.values())
    if total > limit:
        largest = max(counts, key=lambda name: counts[name])
        raise ResourceExhausted(
            f"model '{model}': expected at most {limit} BYTES elements in one request "
            f"(max_bytes_elements), received {total} (input '{largest}': {counts[largest]})"
        )


def check_upload_size(what: str, size: int, limit: int) -> None:
    """Refuse an upload of more than `limit` bytes."""
    if size > limit:
        raise ResourceExhausted(
            f"{what}: expected at most {limit} bytes (max_upload_mb), received {size}"
        )
