"""Plain HTTP calls to a server's REST port, as curl makes them (the standard library only)."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Answer:
    """A response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The message of Triton's error JSON."""
        document = self.json()
        assert set(document) == {"error"}, document
        return str(document["error"])


def call(
    address: str,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Answer:
    """One request on a fresh connection to `address` (host:port), over TLS with `tls`."""
    host, port = address.rsplit(":", 1)
    connection = (
        http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT_S, context=tls)
        if tls is not None
        else http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    )
    if isinstance(body, dict):
        body = json.dumps(body)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_infer_body(width: int = 4) -> dict[str, Any]:
    """A JSON infer request of one row for the add-constant models of the hardening tests."""
    row = [float(i) for i in range(width)]
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, width], "data": row}]}
