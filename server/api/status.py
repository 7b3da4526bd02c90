"""The one place where server errors become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from trtserve.server import errors
from trtserve.server.api.registration import require_message

log = logging.getLogger(__name__)

_CODES: dict[type[errors.ServerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an error; anything unexpected is INTERNAL."""
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def status_message(error: BaseException) -> str:
    """The message a client sees; unexpected errors are labelled as internal."""
    if isinstance(error, errors.ServerError):
        return str(error)
    return f"internal error: {type(error).__name__}: {error}"


def outcome(error: BaseException | None) -> str:
    """The `outcome` label of a request metric."""
    return "success" if error is None else status_code(error).name.lower()


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def grpc_errors(method: Handler) -> Handler:
    """Turn ServerErrors (and unexpected exceptions) of a unary handler into gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, require_message(request), context)
        except errors.ServerError as error:
            await context.abort(status_code(error), status_message(error))
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, status_message(error))

    return wrapper  # type: ignore[return-value]
