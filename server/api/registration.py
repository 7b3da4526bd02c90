"""Register servicers: parsing that cannot fail inside grpc, access checks, error statuses.

grpc's generated registration parses requests before the servicer runs, and bytes that are not
a valid message become an UNKNOWN status with a traceback in the log. Here a parse failure
becomes an `UndecodableRequest` value, refused with INVALID_ARGUMENT: a single request before
the servicer runs, a stream's messages by the servicer as it reads them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from trtserve.server.api.infer_wire import parse_infer_request
from trtserve.server.api.status import with_statuses
from trtserve.server.errors import InvalidArgument

INFER_REQUEST = "inference.ModelInferRequest"


@dataclass(frozen=True)
class UndecodableRequest:
    """Bytes that did not parse as the method's request message."""

    type_name: str
    error: str


def require_message(request: Any) -> Any:
    """The request itself, or InvalidArgument when it did not parse."""
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(
            f"request: expected a serialized {request.type_name} message, received bytes that "
            f"do not parse as one ({request.error})"
        )
    return request


def _parsed(inner: Callable[..., Any]) -> Callable[..., Any]:
    """A single-request behaviour that runs only on a request that parsed."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Any) -> Any:
            async for reply in inner(require_message(request), context):
                yield reply

        return stream

    async def call(request: Any, context: Any) -> Any:
        return await inner(require_message(request), context)

    return call


def _tolerant_parser(message_class: type[Message]) -> Callable[[bytes], Any]:
    from_bytes: Callable[[bytes], Any] = message_class.FromString
    if message_class.DESCRIPTOR.full_name == INFER_REQUEST:
        # Inference requests keep their tensors as views of the received bytes (infer_wire).
        from_bytes = parse_infer_request

    def parse(data: bytes) -> Any:
        try:
            return from_bytes(data)
        except (DecodeError, RuntimeWarning, ValueError) as error:
            return UndecodableRequest(message_class.DESCRIPTOR.full_name, str(error) or "invalid")

    return parse


def _serialize(response: Message | bytes) -> bytes:
    # A servicer may return a response it serialized itself (large ModelInfer outputs).
    return response if isinstance(response, bytes) else response.SerializeToString()


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    guard: Callable[[str, grpc.RpcMethodHandler[Any, Any]], grpc.RpcMethodHandler[Any, Any]],
) -> None:
    """Serve every method of `service` with the servicer method of the same name.

    Every method gets the same treatment, so none is served unchecked or unmapped: a single
    request that did not parse is refused before the servicer runs (streams check each
    message themselves), `guard(full_method_name, handler)` applies the access policy, and
    errors from any of them become gRPC statuses (`status.with_statuses`).
    """
    handlers = {}
    for method in service.methods:
        full_name = f"/{service.full_name}/{method.name}"
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        behaviour = getattr(servicer, method.name)
        handler = factory(
            behaviour if method.client_streaming else _parsed(behaviour),
            request_deserializer=_tolerant_parser(GetMessageClass(method.input_type)),
            response_serializer=_serialize,
        )
        handlers[method.name] = with_statuses(full_name, guard(full_name, handler))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
