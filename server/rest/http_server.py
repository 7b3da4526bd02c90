"""The REST transport: an aiohttp server on the event loop gRPC uses, beside it.

aiohttp, measured against uvicorn running a bare ASGI app, each as trtserve runs it (on the
default asyncio loop a grpc.aio server shares, which rules out uvloop): 6-17% behind at
concurrency 1, 2-10% ahead at 8 and 32 (benchmarks/http_frameworks.py, docs/benchmarks.md),
both far faster than the rest of a request's path. It also brings what the endpoints need
without more code: routing with path patterns, a body size limit, request decompression,
`Expect: 100-continue` (perf_analyzer sends it), TLS through an ssl context, and serving a
socket trtserve binds itself (shared by `--workers`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from trtserve.server.api.auth import AccessPolicy, Caller
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.rest.handlers import Handler, RestHandlers, Route
from trtserve.server.rest.status import error_response, response_for
from trtserve.server.transport import HTTP_IDLE_TIMEOUT_S

log = logging.getLogger(__name__)


class RestServer:
    """The v2 REST endpoints on one listening socket."""

    def __init__(
        self,
        plane: DataPlane,
        policy: AccessPolicy,
        max_body_bytes: int,
        grace_s: float,
        max_connections: int,
    ) -> None:
        """`grace_s`: how long `stop` lets requests in progress finish; `max_connections`:
        connections held at once, more are closed as they arrive (as on the gRPC port)."""
        self._app = _application(plane, policy, max_body_bytes)
        self._grace_s = grace_s
        self._max_connections = max_connections
        self._runner: web.AppRunner | None = None

    async def start(self, listener: socket.socket, ssl_context: ssl.SSLContext | None) -> int:
        """Serve on `listener` (bound and listening); the port it is bound to."""
        self._runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._grace_s,
            keepalive_timeout=HTTP_IDLE_TIMEOUT_S,
        )
        await self._runner.setup()
        _cap_connections(self._runner.server, self._max_connections)
        await web.SockSite(self._runner, listener, ssl_context=ssl_context).start()
        return int(listener.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening; requests in progress get the grace period to finish."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def _cap_connections(server: web.Server | None, limit: int) -> None:
    """Close each connection that arrives while `limit` are open, before it is read.

    Every connection holds a file descriptor: a flood of idle ones must not leave none for
    model files or for clients already connected. aiohttp has no such setting; its server
    records each connection through `connection_made`, which is where it is counted.
    """
    assert server is not None, "the runner is set up"
    admit = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        if len(server.connections) >= limit:
            log.warning("HTTP connection refused: %d connections open (max_connections)", limit)
            transport.abort()
            return
        admit(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


def _application(plane: DataPlane, policy: AccessPolicy, max_body_bytes: int) -> web.Application:
    app = web.Application(
        client_max_size=max_body_bytes, middlewares=[_answer_errors(max_body_bytes)]
    )
    for route in RestHandlers(plane).routes():
        app.router.add_route(route.method, route.path, _guarded(route, policy))
    return app


def _guarded(route: Route, policy: AccessPolicy) -> Handler:
    """The route's handler, behind the access policy when not every caller may call it."""
    if route.role is None or not policy.anonymous_lacks(route.role):
        return route.handler
    needed = route.role

    async def guarded(request: web.Request) -> web.StreamResponse:
        policy.require(needed, f"{request.method} {request.path}", _caller(request))
        return await route.handler(request)

    return guarded


def _caller(request: web.Request) -> Caller:
    """The credentials a request presented: its Authorization headers and verified client CN."""
    authorization = tuple(request.headers.getall("Authorization", ()))
    common_name = None
    transport = request.transport
    certificate = transport.get_extra_info("peercert") if transport is not None else None
    for attributes in (certificate or {}).get("subject", ()):
        for key, value in attributes:
            if key == "commonName":
                common_name = value
    return Caller(authorization, common_name)


def _answer_errors(max_body_bytes: int) -> Middleware:
    """The middleware answering every error as Triton's error JSON with its status."""

    @web.middleware
    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except UnicodeEncodeError as error:
            # JSON may escape a lone UTF-16 surrogate ("\\ud800"), which is no character.
            found = error.object[error.start : error.end]
            return error_response(
                400,
                f"{request.method} {request.path}: a JSON string holds {found!r}, which is not "
                "text (a lone UTF-16 surrogate)",
            )
        except web.RequestPayloadError as error:
            return error_response(400, f"request body: could not be read: {error}")
        except ConnectionResetError:
            log.debug("%s %s: the client went away mid-request", request.method, request.path)
            raise
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                413,
                f"request body: expected at most {max_body_bytes} bytes (setting "
                "max_message_mb), received more",
            )
        except web.HTTPNotFound:
            return error_response(404, f"Not Found: no v2 endpoint at {request.path}")
        except web.HTTPMethodNotAllowed as error:
            allowed = ", ".join(sorted(error.allowed_methods))
            return error_response(
                405,
                f"Method Not Allowed: {request.path} expects {allowed}, received {request.method}",
            )
        except web.HTTPException as error:
            return error_response(error.status, error.text or error.reason)
        except Exception as error:
            return response_for(error, f"{request.method} {request.path}")

    return answer
