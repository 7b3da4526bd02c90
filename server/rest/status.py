"""The one place where errors become HTTP statuses and `{"error": "..."}` bodies.

The statuses are Triton's (its HttpCodeFromError): not found 404, unavailable 503,
unimplemented 501, internal 500, and 400 for the other refusals of a request. Where Triton has
no such error, HTTP's own status is used: 401 and 403 for credentials, 429 for a full queue or
another limit (clients and load balancers back off on it), 413 for a body over the size limit,
504 for a deadline.
"""

from __future__ import annotations

import json

from aiohttp import web

from trtserve.server import errors
from trtserve.server.errors import client_message

_STATUSES: dict[type[errors.ServerError], int] = {
    errors.InvalidArgument: 400,
    errors.NotFound: 404,
    errors.AlreadyExists: 400,
    errors.FailedPrecondition: 400,
    errors.ResourceExhausted: 429,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.Unimplemented: 501,
    errors.Internal: 500,
}


def http_status(error: BaseException) -> int:
    """The HTTP status for an error; anything unexpected is 500."""
    for cls in type(error).__mro__:
        if cls in _STATUSES:
            return _STATUSES[cls]
    return 500


def error_response(status: int, message: str) -> web.Response:
    """A response of `status` whose body is Triton's error JSON."""
    response = web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type="application/json",
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def response_for(error: Exception, where: str) -> web.Response:
    """The response answering `error` raised while serving `where` (method and path)."""
    return error_response(http_status(error), client_message(error, where))
