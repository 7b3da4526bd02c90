"""How the server holds connections: its ports, the connection cap, keepalive, handshakes.

- Ports are bound exclusively: grpc sets SO_REUSEPORT by default, so a second server started
  on a port in use would silently share its connections. Here that start fails instead. The
  workers of one server (`--workers N`) share their port with SO_REUSEPORT, after the
  supervisor has checked, with `claim_port`, that no other process listens on it.
- The gRPC port holds at most `max_connections` connections; each is a file descriptor, and a
  flood of idle ones must not leave none for model files or for valid clients. Connections
  that never finish their handshake are closed after `handshake_timeout_s`.
- Keepalive pings find dead or frozen peers. Clients may ping too (every 10 s or more,
  between calls too) without being disconnected for it.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from trtserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

# File descriptors kept free of connections for model files, uploads, pipes and threads.
FD_RESERVE = 256
# Clients' keepalive pings more often than this are answered with GOAWAY (grpc's default is
# 5 minutes, which disconnects clients configured with a shorter keepalive).
MIN_CLIENT_PING_INTERVAL_MS = 10_000


# Connections the kernel queues for the HTTP port before the server accepts them.
HTTP_BACKLOG = 1024
# An HTTP connection idle this long, before its first request or between two, is closed:
# nginx's default, long enough for clients' pooled connections, where aiohttp's own (3630 s)
# would let silent connections hold the connection cap for an hour.
HTTP_IDLE_TIMEOUT_S = 75.0


class PortInUse(RuntimeError):
    """A port the server was told to listen on cannot be bound; the message names it."""


@dataclass(frozen=True)
class ConnectionLimit:
    """The connection cap and the file-descriptor limit it was derived from."""

    max_connections: int
    fd_limit: int


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one, as servers do; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, error)
    return soft


def connection_limit(settings: ServerSettings) -> ConnectionLimit:
    """The cap on each port's connections: the setting, or the fd limit less a reserve, shared
    by the ports that take connections (gRPC, and HTTP unless it is off)."""
    fd_limit = raise_fd_limit()
    ports = 2 if settings.http_port >= 0 else 1
    derived = max(fd_limit - FD_RESERVE, fd_limit // 2) // ports
    if settings.max_connections is None:
        return ConnectionLimit(derived, fd_limit)
    if settings.max_connections > derived:
        log.warning(
            "max_connections %d on %d ports leaves fewer than %d of the %d file descriptors "
            "for model files",
            settings.max_connections,
            ports,
            fd_limit - derived * ports,
            fd_limit,
        )
    return ConnectionLimit(settings.max_connections, fd_limit)


def server_options(settings: ServerSettings, limit: ConnectionLimit) -> list[tuple[str, int]]:
    """grpc server options for message sizes and the connection behaviour above."""
    max_bytes = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ("grpc.max_allowed_incoming_connections", limit.max_connections),
        ("grpc.server_handshake_timeout_ms", round(settings.handshake_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", round(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.keepalive_timeout_s * 1000)),
        # grpc core (1.85) closes a connection whose ping goes unanswered after this one, not
        # keepalive_timeout_ms (default one minute).
        ("grpc.http2.ping_timeout_ms", round(settings.keepalive_timeout_s * 1000)),
        # Ping idle connections too: a dead peer between calls still holds a descriptor.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ]


def bind_grpc(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Add the gRPC port; its number, or PortInUse naming the address."""
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError as error:
        raise PortInUse(
            f"setting grpc_port: cannot listen on {address} (in use by another process, or "
            f"not an address of this machine): {str(error).split(';')[0]}"
        ) from None


def claim_port(host: str, port: int, setting: str = "grpc_port") -> int:
    """Check that no process listens on host:port (0: choose a free port); the port number.

    Bound without SO_REUSEPORT, as no listener shares with such a socket: a server already on
    the port, even one that shares it, makes this fail.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            reason = "in use by another process" if error.errno == errno.EADDRINUSE else error
            message = f"setting {setting}: cannot listen on {host}:{port}: {reason}"
            raise PortInUse(message) from None
        return int(probe.getsockname()[1])


def listen_http(host: str, port: int, shared: bool) -> socket.socket:
    """A listening socket for the HTTP port, shared with the other workers when `shared`;
    PortInUse naming the setting when it cannot be bound."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, OverflowError) as error:
        raise PortInUse(f"setting http_port: cannot listen on {host}:{port}: {error}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        listener.listen(HTTP_BACKLOG)
    except OSError as error:
        listener.close()
        reason = "in use by another process" if error.errno == errno.EADDRINUSE else error
        raise PortInUse(f"setting http_port: cannot listen on {host}:{port}: {reason}") from None
    listener.setblocking(False)
    return listener


def start_metrics(host: str, port: int, registry: CollectorRegistry) -> int:
    """Serve /metrics on host:port in a thread; the bound port, or PortInUse naming it."""
    # prometheus_client's server sets SO_REUSEADDR only, which does not share a live listener.
    try:
        http_server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        reason = "in use by another process" if error.errno == errno.EADDRINUSE else error
        raise PortInUse(f"setting metrics_port: cannot listen on {host}:{port}: {reason}") from None
    return int(http_server.server_port)
