"""Every registered method answers errors the same way, whatever its kind.

A servicer whose methods fail is served through `add_service`, as the real ones are: a
ServerError keeps its status and message, anything else is INTERNAL with an error id that the
log holds with the traceback, and the client never sees the exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2, trtserve_pb2_grpc
from trtserve.server import errors
from trtserve.server.api.registration import add_service
from trtserve.server.api.status import status_code
from trtserve.server.errors import InvalidArgument, NotFound

SECRET = "secret-detail-0123"
INTERNAL = re.compile(r"internal error ([0-9a-f]{12}): the server log has the details")
TIMEOUT_S = 10.0


class FailingInference(pb_grpc.GRPCInferenceServiceServicer):
    """Unary and bidirectional-streaming methods that fail."""

    async def ServerLive(self, request: Any, context: Any) -> Any:
        raise RuntimeError(SECRET)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        # Internal wraps what a backend said: its text stays in the log too.
        raise errors.Internal(f"model 'x': execution failed: {SECRET}")

    async def ServerReady(self, request: Any, context: Any) -> Any:
        raise NotFound("model 'x' is not loaded")

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            # Inference requests arrive parsed by infer_wire: the message and its raw tensors.
            reply = pb.ModelInferResponse(id=request.message.id)
            yield pb.ModelStreamInferResponse(infer_response=reply)
            raise RuntimeError(SECRET)


class FailingUpload(trtserve_pb2_grpc.ModelUploadServicer):
    """A client-streaming method that fails."""

    async def UploadModel(self, requests: Any, context: Any) -> Any:
        raise InvalidArgument("header.model_name: expected a model name, received ''")


class FailingHealth(health_pb2_grpc.HealthServicer):
    """A server-streaming method that fails after one reply."""

    async def Check(self, request: Any, context: Any) -> Any:
        raise RuntimeError(SECRET)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        raise RuntimeError(SECRET)


def no_guard(method: str, handler: Any) -> Any:
    return handler


async def calls(port: int) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Each method's status code and details, as a client sees them."""
    outcomes: dict[str, tuple[grpc.StatusCode, str]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        inference = "/inference.GRPCInferenceService/"

        async def unary(name: str, method: str, request: Any, parse: Any) -> None:
            call = channel.unary_unary(
                method, request_serializer=lambda m: m, response_deserializer=parse
            )
            try:
                await call(request, timeout=TIMEOUT_S)
                outcomes[name] = (grpc.StatusCode.OK, "")
            except grpc.aio.AioRpcError as error:
                outcomes[name] = (error.code(), error.details() or "")

        meta = pb.ServerMetadataRequest().SerializeToString()
        parse_meta = pb.ServerMetadataResponse.FromString
        await unary("metadata", inference + "ServerMetadata", meta, parse_meta)
        live = pb.ServerLiveRequest().SerializeToString()
        await unary("live", inference + "ServerLive", live, pb.ServerLiveResponse.FromString)
        ready = pb.ServerReadyRequest().SerializeToString()
        await unary("ready", inference + "ServerReady", ready, pb.ServerReadyResponse.FromString)
        # 0xff is no valid field tag: the message cannot parse.
        await unary("garbage", inference + "ServerLive", b"\xff", pb.ServerLiveResponse.FromString)
        check = health_pb2.HealthCheckRequest().SerializeToString()
        await unary(
            "check",
            "/grpc.health.v1.Health/Check",
            check,
            health_pb2.HealthCheckResponse.FromString,
        )

        async def stream(name: str, call: Any) -> None:
            try:
                async for _ in call:
                    pass
                outcomes[name] = (grpc.StatusCode.OK, "")
            except grpc.aio.AioRpcError as error:
                outcomes[name] = (error.code(), error.details() or "")

        bidi = channel.stream_stream(
            inference + "ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        await stream("stream", bidi(iter([pb.ModelInferRequest(id="a")]), timeout=TIMEOUT_S))
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        await stream("watch", watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S))
        upload = trtserve_pb2_grpc.ModelUploadStub(channel)  # type: ignore[no-untyped-call]
        try:
            await upload.UploadModel(iter([trtserve_pb2.UploadRequest()]), timeout=TIMEOUT_S)
            outcomes["upload"] = (grpc.StatusCode.OK, "")
        except grpc.aio.AioRpcError as error:
            outcomes["upload"] = (error.code(), error.details() or "")
    return outcomes


async def serve_and_call() -> dict[str, tuple[grpc.StatusCode, str]]:
    server = grpc.aio.server()
    services = pb.DESCRIPTOR.services_by_name
    add_service(server, FailingInference(), services["GRPCInferenceService"], no_guard)
    upload = trtserve_pb2.DESCRIPTOR.services_by_name["ModelUpload"]
    add_service(server, FailingUpload(), upload, no_guard)
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    add_service(server, FailingHealth(), health, no_guard)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await calls(port)
    finally:
        await server.stop(None)


def test_every_kind_of_method_maps_its_errors_in_one_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="trtserve.server.api.status")
    outcomes = asyncio.run(asyncio.wait_for(serve_and_call(), 4 * TIMEOUT_S))

    assert outcomes["ready"] == (grpc.StatusCode.NOT_FOUND, "model 'x' is not loaded")
    assert outcomes["upload"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.model_name" in outcomes["upload"][1]
    code, details = outcomes["garbage"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "inference.ServerLiveRequest" in details

    ids = []
    for name in ("live", "metadata", "check", "stream", "watch"):
        code, details = outcomes[name]
        found = INTERNAL.fullmatch(details)
        assert code == grpc.StatusCode.INTERNAL and found, (name, code, details)
        assert SECRET not in details
        ids.append(found.group(1))
    assert len(set(ids)) == len(ids)
    for error_id in ids:
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(logged) == 1, (error_id, caplog.text)
        assert logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])


@pytest.mark.parametrize("kind", errors.ServerError.__subclasses__())
def test_each_error_kind_labels_metrics_as_its_status(kind: type[errors.ServerError]) -> None:
    error = kind("x")
    assert errors.outcome(error) == status_code(error).name.lower()


def test_unexpected_errors_label_metrics_internal() -> None:
    assert errors.outcome(RuntimeError("x")) == "internal" and errors.outcome(None) == "success"
