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
    tls.add_argument(
        "--tls-ca",
        default=os.environ.get("TRTSERVE_TLS_CA"),
        metavar="FILE",
        help="PEM certificates to trust (default $TRTSERVE_TLS_CA; else the system's roots)",
    )
    tls.add_argument(
        "--tls-cert",
        default=os.environ.get("TRTSERVE_TLS_CERT"),
        metavar="FILE",
        help="this client's PEM certificate, for mutual TLS (default $TRTSERVE_TLS_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        default=os.environ.get("TRTSERVE_TLS_KEY"),
        metavar="FILE",
        help="its PEM private key (default $TRTSERVE_TLS_KEY)",
    )
    tls.add_argument(
        "--tls-server-name",
        default=os.environ.get("TRTSERVE_TLS_SERVER_NAME"),
        metavar="NAME",
        help="check the server's certificate for this name instead of the address's host",
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
