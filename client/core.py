"""The base of the sync and asyncio clients: everything but sending (as httpx's BaseClient).

It opens a channel per address, each through the subclass (blocking or grpc.aio), and routes
the generated stubs over them; the calls themselves are built in `calls`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import grpc

from trtserve.client.calls import Call
from trtserve.client.credentials import TOKEN_ENV
from trtserve.client.endpoints import (
    DEFAULT_RETRY,
    EndpointRing,
    RetryPolicy,
    RoutedStubBase,
    addresses_of,
    endpoint_options,
)
from trtserve.client.tls import TlsConfig
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc

DEFAULT_ADDRESS = "127.0.0.1:8001"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

ChannelOptions = list[tuple[str, Any]]

_Channel = TypeVar("_Channel")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ChannelSettings:
    """What each of a client's channels is opened with."""

    options: ChannelOptions
    credentials: grpc.ChannelCredentials | None  # TLS; None for plaintext
    token: str | None  # sent as a bearer token with every call


def channel_options(max_message_bytes: int) -> ChannelOptions:
    """Channel options shared by the sync and asyncio clients."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class ClientCore(ABC, Generic[_Channel]):
    """A client's channels and routed stubs; subclasses open the channels and send.

    `timeout` (seconds) is the default deadline of every call; None waits forever. `address`
    may be a list of replicas: calls go to them in turn, and calls safe to repeat move on to
    the next one when a replica answers UNAVAILABLE (see `trtserve.client.endpoints`).
    `token` (default: $TRTSERVE_TOKEN) is sent as a bearer token with every call. `tls`
    connects over TLS (see TlsConfig); without it the connection is plaintext.
    """

    _routed_stub: ClassVar[type[RoutedStubBase]]

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryPolicy = DEFAULT_RETRY,
        token: str | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.addresses = addresses_of(address)
        self.address = ",".join(self.addresses)
        self.timeout = timeout
        options = channel_options(max_message_bytes) + endpoint_options(retry)
        credentials = None
        if tls is not None:
            credentials, options = tls.credentials(), options + tls.options()
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        settings = ChannelSettings(options, credentials, token or None)
        self._channels = [self._open_channel(a, settings) for a in self.addresses]
        ring = EndpointRing(len(self._channels), retry.cooldown_s)
        # The generated stubs are untyped; each call's result type is stated where it is used.
        self._stub = self._routed_stub(
            [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels],  # type: ignore[no-untyped-call]
            ring,
        )
        self._upload_stub = self._routed_stub(
            [tpb_grpc.ModelUploadStub(c) for c in self._channels],  # type: ignore[no-untyped-call]
            ring,
        )

    @abstractmethod
    def _open_channel(self, address: str, settings: ChannelSettings) -> _Channel:
        """A channel to `address`, opened with `settings`."""

    def _one_server(self, call: Call[_T]) -> Call[_T]:
        """`call` if this client talks to one server: shared-memory regions are per server."""
        if len(self.addresses) > 1:
            raise ValueError(
                f"{call.method}: shared-memory regions are registered with one server; this "
                f"client has {len(self.addresses)} addresses ({self.address})"
            )
        return call

    def _method(self, call: Call[Any]) -> Callable[..., Any]:
        """The routed stub method that sends `call`."""
        method: Callable[..., Any] = getattr(
            self._upload_stub if call.upload else self._stub, call.method
        )
        return method
