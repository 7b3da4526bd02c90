"""The v2 REST endpoints as data plane calls: read the JSON, call, answer JSON.

Paths, methods, bodies and statuses are Triton's, so tritonclient.http, perf_analyzer -i http
and curl work unchanged. Requests are read into the same v2 messages as gRPC's (server/v2), so
both transports check them alike and answer with the same messages.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.message import Message

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.api.auth import Role
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.dataplane.shared_memory import RegionKind
from trtserve.server.errors import InvalidArgument, Unavailable, Unimplemented
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.repository.repository import check_model_name
from trtserve.server.rest.infer_json import (
    HEADER_LENGTH,
    RestInferRequest,
    read_request,
    split_body,
)
from trtserve.server.rest.infer_json import response_document as infer_document
from trtserve.server.rest.json_messages import (
    UINT64_MAX,
    as_json,
    field_of,
    read_object,
    required_field,
)
from trtserve.server.rest.status import error_response
from trtserve.server.runtime.tensor_buffers import PlacedOutput
from trtserve.server.scheduler.request import InferenceResponse
from trtserve.server.v2 import messages
from trtserve.server.v2.codec import CheckedRequest, ResponseOutput, check_request, response_outputs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Under `serve --workers N`, GET /v2 names the answering worker's index in this header.
WORKER_HEADER = "trtserve-worker"
# JSON bigger than this is read and written on a worker thread, off the event loop.
OFF_LOOP_JSON_BYTES = 1 << 20


@dataclass(frozen=True)
class Route:
    """One endpoint: method, path pattern, handler and the role a caller needs (None: open)."""

    method: str
    path: str
    handler: Handler
    role: Role | None


class RestHandlers:
    """Every v2 REST endpoint over one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def routes(self) -> list[Route]:
        """Every endpoint, Triton's paths; `{version}` is digits only, as Triton's."""
        infer = Role.INFER
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version:[0-9]+}"
        routes = [
            Route("GET", "/v2/health/live", self.live, None),
            Route("GET", "/v2/health/ready", self.ready, None),
            Route("GET", "/v2", self.server_metadata, infer),
            Route("GET", "/v2/models/stats", self.statistics, infer),
            Route("POST", "/v2/repository/index", self.index, infer),
            Route("POST", "/v2/repository/models/{model}/load", self.load, Role.ADMIN),
            Route("POST", "/v2/repository/models/{model}/unload", self.unload, Role.ADMIN),
        ]
        for base in (model, versioned):
            routes += [
                Route("GET", base, self.model_metadata, infer),
                Route("GET", base + "/ready", self.model_ready, infer),
                Route("GET", base + "/config", self.model_config, infer),
                Route("GET", base + "/stats", self.statistics, infer),
                Route("POST", base + "/infer", self.infer, infer),
            ]
        # Triton's trace and logging extensions: answered, and refused as not implemented.
        for path in ("/v2/trace/setting", model + "/trace/setting", "/v2/logging"):
            routes += [Route(m, path, self.not_implemented, infer) for m in ("GET", "POST")]
        for kind in RegionKind:
            prefix = f"/v2/{kind.value}sharedmemory"
            region = prefix + "/region/{region}"
            routes += [
                Route("GET", prefix + "/status", self._region_status(kind), infer),
                Route("GET", region + "/status", self._region_status(kind), infer),
                Route("POST", region + "/register", self._register(kind), infer),
                Route("POST", prefix + "/unregister", self._unregister(kind), infer),
                Route("POST", region + "/unregister", self._unregister(kind), infer),
            ]
        return routes

    async def not_implemented(self, request: web.Request) -> web.Response:
        raise Unimplemented(
            f"{request.method} {request.path}: Triton's trace and logging settings are not "
            "implemented by this server (it logs to stderr; see --log-level and --log-format)"
        )

    # --- health and metadata -----------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._plane.live() else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._plane.ready() else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        response = _json(messages.server_metadata(self._plane))
        worker = self._plane.info().worker
        if worker is not None:
            # Which worker a connection reached, for operators and tests of `--workers`.
            response.headers[WORKER_HEADER] = str(worker)
        return response

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model_of(request)
        return _json(messages.model_metadata(self._plane, name, version))

    async def model_ready(self, request: web.Request) -> web.Response:
        """200 when ready; 400 naming why not (Triton's); 404 for a model or version not known."""
        name, version = _model_of(request)
        try:
            self._plane.model(name, version)
        except Unavailable as error:
            return error_response(400, str(error))
        if self._plane.state.draining:  # found, but no longer taking requests
            return error_response(400, "server is shutting down")
        return web.Response(status=200)

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = _model_of(request)
        return _json(messages.model_config(self._plane, name, version).config)

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = _model_of(request)
        return _json(messages.statistics(self._plane, name, version))

    # --- repository ----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        body = await _read_json(request, "repository index request")
        ready = field_of(body, "ready", bool, "repository index request: ", False)
        reply = await messages.repository_index(self._plane, ready)
        # Triton leaves out an empty version and an empty reason.
        models = [
            {key: value for key, value in entry.items() if value != ""}
            for entry in as_json(reply)["models"]
        ]
        return _json_body(models)

    async def load(self, request: web.Request) -> web.Response:
        name = check_model_name(request.match_info["model"])
        body = await _read_json(request, f"load of model '{name}'")
        load = pb.RepositoryModelLoadRequest(model_name=name)
        for key, value in field_of(body, "parameters", dict, "", {}).items():
            _load_parameter(load, key, value)
        config_json, files = messages.load_parameters(load)
        await self._plane.load(name, config_json, files)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        body = await _read_json(request, "unload request")
        parameters = field_of(body, "parameters", dict, "", {})
        field_of(parameters, "unload_dependents", bool, "parameters: ")  # no dependents here
        await self._plane.unload(request.match_info["model"])
        return web.Response(status=200)

    # --- shared memory -------------------------------------------------------------------------

    def _region_status(self, kind: RegionKind) -> Handler:
        async def status(request: web.Request) -> web.Response:
            name = request.match_info.get("region", "")
            if kind is RegionKind.SYSTEM:
                regions: Message = messages.system_regions(self._plane, name)
            else:
                regions = messages.cuda_regions(self._plane, name)
            listed = as_json(regions)["regions"]
            return _json_body([listed[n] for n in sorted(listed)])

        return status

    def _register(self, kind: RegionKind) -> Handler:
        async def register(request: web.Request) -> web.Response:
            name = request.match_info["region"]
            where = f"register of {kind.value} region '{name}'"
            body = await _read_json(request, where)
            byte_size = _required_int(body, "byte_size", where)
            if kind is RegionKind.SYSTEM:
                key = required_field(body, "key", str, f"{where}: ")
                offset = _non_negative(body, "offset", where, 0) or 0
                await self._plane.register_system_region(name, key, offset, byte_size)
            else:
                handle = _raw_handle(body, where)
                device = _required_int(body, "device_id", where)
                await self._plane.register_cuda_region(name, handle, device, byte_size)
            return web.Response(status=200)

        return register

    def _unregister(self, kind: RegionKind) -> Handler:
        async def unregister(request: web.Request) -> web.Response:
            await self._plane.unregister_region(kind, request.match_info.get("region", ""))
            return web.Response(status=200)

        return unregister

    # --- inference -----------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model_of(request)
        text, binary = split_body(await request.read(), request.headers.get(HEADER_LENGTH))
        limits = self._plane.limits
        read = functools.partial(
            read_request, text, binary, name, version, limits.max_tensor_elements
        )
        # A large JSON part parses for a while: not on the loop gRPC shares (the parser still
        # holds the interpreter lock, so send big tensors as binary data).
        rest = await asyncio.to_thread(read) if len(text) > OFF_LOOP_JSON_BYTES else read()

        def prepare(model: ServingModel) -> CheckedRequest:
            return check_request(rest.message, model, None, limits, rest.raw)

        def encode(model: ServingModel, response: InferenceResponse) -> _Answer:
            return _Answer(model.version, response_outputs(model, response))

        answer = await self._plane.infer(name, version, prepare, encode)
        if _json_elements(rest, answer.outputs) > OFF_LOOP_JSON_BYTES // 8:
            reply, parts = await asyncio.to_thread(
                infer_document, rest, answer.version, answer.outputs
            )
        else:
            reply, parts = infer_document(rest, answer.version, answer.outputs)
        if not parts:
            return web.Response(body=reply, content_type="application/json")
        # Triton's binary tensor data extension: the JSON's length, then the outputs' bytes.
        response = web.Response(
            body=b"".join([reply, *parts]), content_type="application/octet-stream"
        )
        response.headers[HEADER_LENGTH] = str(len(reply))
        return response


@dataclass(frozen=True)
class _Answer:
    """An inference's outputs, as the data plane hands them back to be written as REST."""

    version: int
    outputs: list[ResponseOutput]


def _json_elements(request: RestInferRequest, outputs: list[ResponseOutput]) -> int:
    """How many elements the response writes as JSON numbers or strings."""
    return sum(
        int(o.array.size)
        for o in outputs
        if not isinstance(o.array, PlacedOutput) and not request.wants_binary(o.name)
    )


async def _read_json(request: web.Request, what: str) -> dict[str, Any]:
    """The body, one JSON object; parsed off the loop when it is large (a load's files)."""
    body = await request.read()
    if len(body) > OFF_LOOP_JSON_BYTES:
        return await asyncio.to_thread(read_object, body, what)
    return read_object(body, what)


def _model_of(request: web.Request) -> tuple[str, str]:
    """The model name and version ("" for none) of a /v2/models/... path."""
    return request.match_info.get("model", ""), request.match_info.get("version", "")


def _json(message: Message) -> web.Response:
    return _json_body(as_json(message))


def _json_body(body: object) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json"
    )


def _load_parameter(load: pb.RepositoryModelLoadRequest, key: str, value: Any) -> None:
    """One load parameter: `config` a JSON string, `file:<path>` a file's base64."""
    if not isinstance(value, str):
        raise InvalidArgument(f"parameter '{key}': expected a JSON string, received {value!r}")
    if not key.startswith("file:"):
        load.parameters[key].string_param = value
        return
    try:
        load.parameters[key].bytes_param = _base64(value)
    except ValueError as error:  # binascii.Error, or text that is not ASCII
        raise InvalidArgument(
            f"parameter '{key}': expected the file's contents in base64, received text that "
            f"is not: {error}"
        ) from None


def _required_int(body: dict[str, Any], name: str, where: str) -> int:
    required_field(body, name, int, f"{where}: ")
    value = _non_negative(body, name, where, None)
    assert value is not None
    return value


def _non_negative(body: dict[str, Any], name: str, where: str, default: int | None) -> int | None:
    """`body[name]`, an integer from 0 to 2**64 - 1 (a uint64 of the gRPC message)."""
    value = field_of(body, name, int, f"{where}: ", default)
    if value is not None and not 0 <= value <= UINT64_MAX:
        raise InvalidArgument(
            f"{where}: '{name}': expected an integer from 0 to {UINT64_MAX}, received {value}"
        )
    return None if value is None else int(value)


def _raw_handle(body: dict[str, Any], where: str) -> bytes:
    """A CUDA IPC handle sent as {"b64": "..."}."""
    handle = field_of(body, "raw_handle", dict, f"{where}: ")
    encoded = field_of(handle or {}, "b64", str, f"{where}: raw_handle: ")
    if encoded is None:
        raise InvalidArgument(
            f'{where}: \'raw_handle\': expected {{"b64": "<base64 of the handle>"}}, '
            f"received {handle!r}"
        )
    try:
        return _base64(encoded)
    except ValueError as error:  # binascii.Error, or text that is not ASCII
        raise InvalidArgument(f"{where}: raw_handle: 'b64': not base64: {error}") from None


def _base64(text: str) -> bytes:
    """Base64 as Triton's clients write it: the C++ client's libb64 breaks lines every 72
    characters, which Triton's decoder skips; anything else that is not base64 is refused."""
    return base64.b64decode("".join(text.split()), validate=True)
