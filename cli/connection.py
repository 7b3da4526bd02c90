"""How every client command reaches the server: its address, and TLS when the server uses it."""

from __future__ import annotations

import argparse
import os

from trtserve.client import InferenceClient, TlsConfig

DEFAULT_ADDRESS = os.environ.get("TRTSERVE_ADDRESS", "127.0.0.1:8001")


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """The server address and TLS options every client command takes."""
    p.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="server gRPC address (default $TRTSERVE_ADDRESS or 127.0.0.1:8001)",
    )
    tls = p.add_argument_group(
        "TLS", "connect over TLS when any of these is given (a server started with --tls-cert)"
    )
    for flag, metavar, env, text in _TLS_OPTIONS:
        tls.add_argument(
            flag, default=os.environ.get(env), metavar=metavar, help=f"{text} (default ${env})"
        )


# flag, metavar, environment variable, what it is
_TLS_OPTIONS = (
    ("--tls-ca", "FILE", "TRTSERVE_TLS_CA", "PEM certificates to trust, else the system's roots"),
    ("--tls-cert", "FILE", "TRTSERVE_TLS_CERT", "this client's PEM certificate, for mutual TLS"),
    ("--tls-key", "FILE", "TRTSERVE_TLS_KEY", "its PEM private key"),
    (
        "--tls-server-name",
        "NAME",
        "TRTSERVE_TLS_SERVER_NAME",
        "check the server's certificate for this name instead of the address's host",
    ),
)


class ConnectionSettingsError(ValueError):
    """The TLS options cannot be used (a file that cannot be read, a certificate without key)."""


def tls_of(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS settings the arguments ask for; None for plaintext."""
    given = (args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    if all(value is None for value in given):
        return None
    try:
        return TlsConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except ValueError as e:
        raise ConnectionSettingsError(str(e)) from None


def connect(args: argparse.Namespace, timeout: float | None = None) -> InferenceClient:
    """A client for the server the arguments name."""
    return InferenceClient(args.address, timeout=timeout, tls=tls_of(args))
