"""Errors the server raises, one class per kind of gRPC status.

Every layer raises these; ``trtserve.server.api.status`` maps them to gRPC status codes in one
place. Messages name the field or model, the expected and the received value.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base class of every error that reaches a client as a gRPC status."""


class InvalidArgument(ServerError):
    """The request is malformed: wrong datatype, shape, size, name or parameter."""


class NotFound(ServerError):
    """An unknown model, version or tensor was named."""


class AlreadyExists(ServerError):
    """The thing to create exists already."""


class FailedPrecondition(ServerError):
    """The request is valid but the server's state does not allow it (e.g. a corrupt model)."""


class ResourceExhausted(ServerError):
    """A limit was hit: queue full, message or upload too large."""


class Unavailable(ServerError):
    """The server or model cannot serve now (shutting down, model not ready)."""


class DeadlineExceeded(ServerError):
    """The request's deadline passed before it could run."""


class Unauthenticated(ServerError):
    """No valid credentials were sent."""


class PermissionDenied(ServerError):
    """The credentials do not allow this call."""


class Internal(ServerError):
    """A bug or an unexpected failure inside the server."""
