"""gRPC server credentials for TLS, and mutual TLS when a client CA is given."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

_PEM_MARKER = b"-----BEGIN "


class TlsConfigError(ValueError):
    """A certificate, key or CA file is missing or not PEM; the message names the setting."""


def _read_pem(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(
            f"setting {setting}: expected a readable PEM file, received {path}: "
            f"{error.strerror or error}"
        ) from None
    if _PEM_MARKER not in data:
        raise TlsConfigError(
            f"setting {setting}: expected PEM text ('-----BEGIN ...'), received {path} "
            f"({len(data)} bytes without a PEM block)"
        )
    return data


def _public_key_der(key: object) -> bytes:
    data: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def check_key_pair(chain: bytes, private_key: bytes) -> x509.Certificate:
    """The chain's first certificate, after checking that `private_key` belongs to it.

    gRPC itself only reports "Failed to bind" for a mismatched pair.
    """
    try:
        cert = x509.load_pem_x509_certificate(chain)
    except ValueError as error:
        raise TlsConfigError(f"setting tls_cert: expected a PEM certificate: {error}") from None
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as error:
        raise TlsConfigError(
            f"setting tls_key: expected an unencrypted PEM private key: {error}"
        ) from None
    if _public_key_der(key.public_key()) != _public_key_der(cert.public_key()):
        raise TlsConfigError(
            f"settings tls_cert and tls_key: expected the key of the certificate "
            f"{cert.subject.rfc4514_string()}, received the key of another certificate"
        )
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        log.warning(
            "the server certificate %s expired on %s; clients will refuse it",
            cert.subject.rfc4514_string(),
            cert.not_valid_after_utc.isoformat(),
        )
    return cert


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`.

    With `client_ca`, every client must present a certificate that CA signed; the handshake
    refuses the others before any RPC runs, and the accepted certificate's subject is in each
    call's auth context (what the access policy maps to a role).
    """
    chain = _read_pem(cert, "tls_cert")
    private_key = _read_pem(key, "tls_key")
    check_key_pair(chain, private_key)
    roots = _read_pem(client_ca, "tls_client_ca") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)],
        root_certificates=roots,
        require_client_auth=roots is not None,
    )


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The same certificate, key and client CA as `server_credentials`, for the HTTP port."""
    check_key_pair(_read_pem(cert, "tls_cert"), _read_pem(key, "tls_key"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        _read_pem(client_ca, "tls_client_ca")
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
