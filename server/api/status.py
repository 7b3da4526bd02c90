"""The one place where errors become gRPC statuses, applied to every method at registration.

A `ServerError` is answered with its status and message. `Internal` and anything else (a
bug) are answered INTERNAL with an error id, and the log gets the id with the traceback, so
internal details never reach a caller but an operator can find them. `error_for_status` is
the way back, for a status one process receives from another of the same server.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NoReturn, TypeAlias

import grpc

from trtserve.server import errors
from trtserve.server.errors import client_message

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
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

Behaviour = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an error; anything unexpected is INTERNAL."""
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def error_for_status(code: grpc.StatusCode, message: str) -> errors.ServerError:
    """The error a status stands for: a worker relays another worker's refusal with its code."""
    for cls, cls_code in _CODES.items():
        if cls_code == code:
            return cls(message)
    return errors.Internal(message)


def with_statuses(method: str, handler: Handler) -> Handler:
    """`handler` for the full method name `method`, its errors answered as gRPC statuses."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_call(method, handler.unary_unary), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_call(method, handler.stream_unary), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_stream(method, handler.unary_stream), **codecs)
    assert handler.stream_stream is not None, "a method handler has one behaviour"
    return grpc.stream_stream_rpc_method_handler(_stream(method, handler.stream_stream), **codecs)


def _call(method: str, inner: Behaviour) -> Behaviour:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await inner(request, context)
        except Exception as error:
            await _abort(context, error, method)

    return call


def _stream(method: str, inner: Behaviour) -> Behaviour:
    if not inspect.isasyncgenfunction(inner):
        # A streaming handler may also be a coroutine that writes with context.write().
        return _call(method, inner)

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for reply in inner(request, context):
                yield reply
        except Exception as error:
            await _abort(context, error, method)

    return stream


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], error: Exception, method: str
) -> NoReturn:
    if isinstance(error, grpc.aio.AbortError):  # the handler has answered already
        raise error
    await context.abort(status_code(error), client_message(error, method))
    raise AssertionError("unreachable: abort raises")
