"""Errors the server raises, one class per kind of gRPC status.

Every layer raises these; ``trtserve.server.api.status`` maps them to gRPC status codes in one
place. Messages name the field or model, the expected and the received value.
"""

from __future__ import annotations

from typing import ClassVar


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


class Internal(ServerError):
    """A bug or an unexpected failure inside the server."""

    kind = "internal"


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
