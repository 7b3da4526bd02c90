"""Several server addresses behind one client: round-robin and failover on UNAVAILABLE.

A client in front of a Kubernetes headless Service either gets one DNS name
(``dns:///trtserve-headless:8001``: gRPC resolves every pod and spreads calls with its own
``round_robin`` policy) or a list of pod addresses. Each address gets its own channel; calls go
to the addresses in turn. A call that ends UNAVAILABLE is first retried by gRPC itself on the
same channel (the retry policy in the channel's service config, with backoff), then, for calls
safe to repeat, sent to the next address; an address that failed is skipped for `cooldown_s`
while another one answers.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

INFERENCE_SERVICE = "inference.GRPCInferenceService"

# Unary calls without side effects on the server (inference included: models are stateless),
# so sending one again, or to another replica, is safe. Repository load/unload and uploads
# target the replica they reach and are never re-sent elsewhere.
RETRYABLE_METHODS = frozenset(
    {
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "ModelInfer",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """How UNAVAILABLE is retried: by gRPC per address, then once on each other address.

    `max_attempts` counts gRPC's tries on one address (gRPC caps it at 5); the backoff between
    them grows from `initial_backoff_s` by `backoff_multiplier` up to `max_backoff_s`.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts: expected 1 to 5, received {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                "backoff: expected 0 < initial_backoff_s <= max_backoff_s, received "
                f"{self.initial_backoff_s} and {self.max_backoff_s}"
            )
        if self.backoff_multiplier < 1 or self.cooldown_s < 0:
            raise ValueError(
                "expected backoff_multiplier >= 1 and cooldown_s >= 0, received "
                f"{self.backoff_multiplier} and {self.cooldown_s}"
            )

    def service_config(self) -> str:
        """The gRPC service config (JSON) with this retry policy for the safe methods."""
        method_config: dict[str, Any] = {
            "name": [{"service": INFERENCE_SERVICE, "method": m} for m in sorted(RETRYABLE_METHODS)]
        }
        if self.max_attempts > 1:
            method_config["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s}s",
                "maxBackoff": f"{self.max_backoff_s}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps(
            {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method_config]}
        )


DEFAULT_RETRY = RetryPolicy()


def addresses_of(address: str | Sequence[str]) -> tuple[str, ...]:
    """The addresses a client was given: one string, or a sequence of them."""
    found = (address,) if isinstance(address, str) else tuple(address)
    if not found or any(not isinstance(a, str) or not a.strip() for a in found):
        raise ValueError(f"address: expected 'host:port' or a list of them, received {address!r}")
    return tuple(a.strip() for a in found)


def endpoint_options(retry: RetryPolicy) -> list[tuple[str, Any]]:
    """Channel options that turn on gRPC's retries and round-robin within one address."""
    return [("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config())]


class EndpointRing:
    """Indices of endpoints in round-robin order, skipping recently failed ones."""

    def __init__(
        self, size: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if size < 1:
            raise ValueError(f"endpoints: expected at least 1, received {size}")
        self.size = size
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._next = 0
        self._down_until = [0.0] * size
        self._lock = threading.Lock()

    def order(self) -> list[int]:
        """Every index, for one call: healthy ones from the next in turn, then failed ones."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % self.size
            now = self._clock()
            turn = [(start + i) % self.size for i in range(self.size)]
            healthy = [i for i in turn if self._down_until[i] <= now]
            return healthy + [i for i in turn if self._down_until[i] > now]

    def mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = self._clock() + self.cooldown_s

    def mark_up(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = 0.0


def _unavailable(error: BaseException) -> bool:
    code = getattr(error, "code", None)
    return callable(code) and code() == grpc.StatusCode.UNAVAILABLE


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Failover:
    """One call's tries over the endpoints, within the call's one `timeout`.

    `order` lists the endpoints to try, healthy ones first; each try runs inside
    `with failover.trying(index):`, which marks its endpoint up on an answer, or down on
    UNAVAILABLE, swallowed so the next endpoint is tried while time is left. Any other error
    propagates.
    """

    __slots__ = ("_deadline", "_index", "_ring", "last", "order")

    def __init__(self, ring: EndpointRing, timeout: float | None) -> None:
        self._ring = ring
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._index = 0
        self.order = ring.order()
        self.last: grpc.RpcError | None = None

    def remaining(self) -> float | None:
        """The time left for the call, None without a deadline."""
        return _remaining(self._deadline)

    def trying(self, index: int) -> Failover:
        self._index = index
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc is None:
            self._ring.mark_up(self._index)
            return False
        if not isinstance(exc, grpc.RpcError) or not _unavailable(exc):
            return False
        self._ring.mark_down(self._index)
        self.last = exc
        return self.remaining() != 0.0

    def error(self) -> grpc.RpcError:
        """The UNAVAILABLE that ended the last try, once every endpoint was tried."""
        assert self.last is not None
        return self.last


class RoutedStubBase:
    """Stands in for a generated stub over several endpoints.

    Methods in RETRYABLE_METHODS go to the endpoints in turn until one does not answer
    UNAVAILABLE (see Failover); any other method (streams, load, unload, upload) goes to the
    next endpoint in turn, once. Subclasses only make the failover call blocking or awaitable.
    """

    def __init__(self, stubs: Sequence[Any], ring: EndpointRing) -> None:
        if len(stubs) != ring.size:
            raise ValueError(f"stubs: expected {ring.size}, received {len(stubs)}")
        self._stubs = tuple(stubs)
        self._ring = ring

    def __getattr__(self, name: str) -> Any:
        if name in RETRYABLE_METHODS:
            return functools.partial(self._failover, name)
        return getattr(self._stubs[self._ring.order()[0]], name)

    def _failover(self, name: str, request: Any, timeout: float | None = None) -> Any:
        raise NotImplementedError


class RoutedStub(RoutedStubBase):
    """Routes generated blocking stubs."""

    def _failover(self, name: str, request: Any, timeout: float | None = None) -> Any:
        failover = Failover(self._ring, timeout)
        for index in failover.order:
            with failover.trying(index):
                return getattr(self._stubs[index], name)(request, timeout=failover.remaining())
        raise failover.error()


class AsyncRoutedStub(RoutedStubBase):
    """RoutedStub for grpc.aio stubs: the retryable methods are coroutines."""

    async def _failover(self, name: str, request: Any, timeout: float | None = None) -> Any:
        failover = Failover(self._ring, timeout)
        for index in failover.order:
            with failover.trying(index):
                method = getattr(self._stubs[index], name)
                return await method(request, timeout=failover.remaining())
        raise failover.error()
