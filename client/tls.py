"""TLS for the clients: which CA to trust, and a certificate to present for mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes for a TLS connection.

    `ca`: the certificates to trust (None: the system's roots). `cert` and `key`: this
    client's certificate and private key, for servers that require mutual TLS (both or
    neither). `server_name`: the name to check the server's certificate against instead of
    the address's host (an address by IP, or a certificate made for another name).
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(
                f"tls: a client {given} needs its {missing} too; received only the {given}"
            )

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read the PEM files; ValueError names a file that cannot be read."""
        return cls(_read(ca, "CA"), _read(cert, "certificate"), _read(key, "key"), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def options(self) -> list[tuple[str, Any]]:
        """Channel options: the server name override, when one is set."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"tls {what} file {path}: {e.strerror or e}") from None
