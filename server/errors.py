"""Errors the server raises, one class per kind of gRPC status.

Every layer raises these; each transport maps them to its statuses in one place
(``trtserve.server.api.status`` for gRPC, ``trtserve.server.rest.status`` for HTTP). Messages
name the field or model, the expected and the received value.
"""

from __future__ import annotations

import logging
import secrets
from typing import ClassVar

log = logging.getLogger(__name__)


class ServerError(Exception):
    """Base class of every error that reaches a client as a gRPC status."""

    # The kind as metrics label it (the status name in lower case); "internal" for a bug.
    kind: ClassVar[str] = "internal"


class InvalidArgument(ServerError):
    """The request is malformed: wrong datatype, shape, size, name or parameter."""

    kind = "invalid_argument"


class NotFound(ServerError):
    """An unknown model, version or tensor was named."""

    kind = "not_found"


class AlreadyExists(ServerError):
    """The thing to create exists already."""

    kind = "already_exists"


class FailedPrecondition(ServerError):
    """The request is valid but the server's state does not allow it (e.g. a corrupt model)."""

    kind = "failed_precondition"


class ResourceExhausted(ServerError):
    """A limit was hit: queue full, message or upload too large."""

    kind = "resource_exhausted"


class Unavailable(ServerError):
    """The server or model cannot serve now (shutting down, model not ready)."""

    kind = "unavailable"


class DeadlineExceeded(ServerError):
    """The request's deadline passed before it could run."""

    kind = "deadline_exceeded"


class Unauthenticated(ServerError):
    """No valid credentials were sent."""

    kind = "unauthenticated"


class PermissionDenied(ServerError):
    """The credentials do not allow this call."""

    kind = "permission_denied"


class Unimplemented(ServerError):
    """A protocol extension this server does not implement (trace, logging settings)."""

    kind = "unimplemented"


class Internal(ServerError):
    """A bug or an unexpected failure inside the server."""

    kind = "internal"


def client_message(error: Exception, where: str) -> str:
    """What a client is told of `error`; an internal one is logged under a fresh id.

    Internal errors (bugs, and `Internal`, which wraps a backend's failure) may carry a
    backend's or library's own text: the client gets the id, never that text.
    """
    if isinstance(error, ServerError) and not isinstance(error, Internal):
        return str(error)
    error_id = secrets.token_hex(6)
    log.error("internal error %s in %s", error_id, where, exc_info=error)
    return f"internal error {error_id}: the server log has the details"


def reworded(error: ServerError, message: str) -> ServerError:
    """A copy of `error` saying `message`: its class and attributes kept, whatever its
    constructor takes (DeserializationFailed's TensorRT words, CudaError's status)."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = (message,)
    return copy


def outcome(error: BaseException | None) -> str:
    """The `outcome` label of a request metric: "success", or the error's kind."""
    if error is None:
        return "success"
    return error.kind if isinstance(error, ServerError) else "internal"
