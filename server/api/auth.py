"""Who may call what: bearer tokens and client certificates mapped to roles, checked per RPC.

Roles: ``infer`` (inference and metadata) and ``admin`` (load, unload, upload; and so a runtime
install, which only a load can trigger). ``admin`` may do everything ``infer`` may. Health
checks, server reflection, ServerLive and ServerReady stay open: probes carry no credentials
(``server.api.health`` guards a model's health). A method this module does not list needs
``admin``, so a new RPC is closed until classified. The check runs before the request message
is read, so a refused caller cannot make the server receive a large one.

Credentials:

- bearer tokens, from a file of ``TOKEN ROLE`` lines (a mounted secret works), sent by the
  client as metadata ``authorization: Bearer TOKEN``. Tokens are compared by their sha256
  with ``hmac.compare_digest``, always against every configured token, so the time taken does
  not tell how much of a guess was right. The file is re-read when it changes (rotation).
- client certificates (mutual TLS): the handshake has verified the certificate against the
  configured CA; its subject CN maps to a role (``CN=ROLE`` entries, ``*=ROLE`` for the rest,
  ``admin`` by default).

Without either, callers are anonymous: inference is open and admin calls are refused, unless
the operator chose ``insecure_local_admin`` (which binds the server to loopback).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from trtserve.server.errors import (
    InvalidArgument,
    PermissionDenied,
    ServerError,
    Unauthenticated,
)

log = logging.getLogger(__name__)


class Role(IntEnum):
    """A caller's role; a higher role may do everything a lower one may."""

    INFER = 1
    ADMIN = 2

    @property
    def label(self) -> str:
        """The role as written in token files and messages: 'infer' or 'admin'."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, where: str) -> Role:
        """'infer' or 'admin'; AuthConfigError names `where` otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise AuthConfigError(
                f"{where}: expected role 'infer' or 'admin', received {text.strip()!r}"
            ) from None


class AuthConfigError(ValueError):
    """The token file or the certificate role mapping is unusable; the message says where."""


_INFERENCE = "/inference.GRPCInferenceService/"
_UPLOAD = "/trtserve.ModelUpload/"
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
OPEN_METHODS = frozenset({_INFERENCE + "ServerLive", _INFERENCE + "ServerReady"})
INFER_METHODS = frozenset(
    _INFERENCE + name
    for name in (
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "ModelInfer",
        "ModelStreamInfer",
        "RepositoryIndex",
        # A client registers its own memory to pass tensors by reference: part of inference.
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
    )
)
ADMIN_METHODS = frozenset(
    {
        _INFERENCE + "RepositoryModelLoad",
        _INFERENCE + "RepositoryModelUnload",
        _UPLOAD + "UploadModel",
    }
)
MIN_TOKEN_LENGTH = 16
_BEARER = "bearer "


def required_role(method: str) -> Role | None:
    """The role a full method name ('/package.Service/Method') needs; None: open to all."""
    if method in OPEN_METHODS or method.startswith(OPEN_PREFIXES):
        return None
    if method in INFER_METHODS:
        return Role.INFER
    return Role.ADMIN


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, source: str) -> dict[bytes, Role]:
    """Token digests and roles from 'TOKEN ROLE' lines; '#' starts a comment line.

    Error messages name the line, never the token.
    """
    tokens: dict[bytes, Role] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = line.split()
        if len(parts) != 2:
            raise AuthConfigError(
                f"{where}: expected 'TOKEN ROLE' (two fields), received {len(parts)} fields"
            )
        token, role_text = parts
        role = Role.parse(role_text, where)
        if len(token) < MIN_TOKEN_LENGTH:
            raise AuthConfigError(
                f"{where}: expected a token of at least {MIN_TOKEN_LENGTH} characters, received "
                f"{len(token)}; make one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
            )
        digest = _digest(token)
        if tokens.get(digest, role) != role:
            raise AuthConfigError(f"{where}: this token was given another role on an earlier line")
        tokens[digest] = role
    if not tokens:
        raise AuthConfigError(f"{source}: expected at least one 'TOKEN ROLE' line, received none")
    return tokens


class TokenFile:
    """The tokens of a file, re-read when the file changes (checked at most every `recheck_s`).

    A change that does not parse keeps the previous tokens and is logged: a half-written
    rotation must not lock everyone out.
    """

    def __init__(self, path: Path, recheck_s: float = 2.0) -> None:
        self.path = path
        self._recheck_s = recheck_s
        self._stamp = self._stat()
        self._tokens = self._read()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as error:
            raise AuthConfigError(
                f"setting auth_tokens_file: expected a readable file, received {self.path}: "
                f"{error.strerror or error}"
            ) from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> dict[bytes, Role]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise AuthConfigError(
                f"setting auth_tokens_file: expected a readable UTF-8 file, received "
                f"{self.path}: {error}"
            ) from None
        return parse_tokens(text, str(self.path))

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._recheck_s:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._tokens = self._read()
                self._stamp = stamp
                log.info("re-read %d bearer tokens from %s", len(self._tokens), self.path)
        except AuthConfigError as error:
            log.error("keeping the previous bearer tokens: %s", error)

    def role_of(self, token: str) -> Role | None:
        """The role of a presented token, or None when it matches none."""
        self._refresh()
        presented = _digest(token)
        found: Role | None = None
        for digest, role in self._tokens.items():
            # Every entry is compared, match or not, so timing reveals nothing.
            if hmac.compare_digest(presented, digest):
                found = role
        return found


def parse_client_roles(entries: Iterable[str]) -> tuple[dict[str, Role], Role]:
    """'CN=ROLE' entries to a mapping, and the role of other certificates ('*=ROLE')."""
    mapping: dict[str, Role] = {}
    default = Role.ADMIN
    for entry in entries:
        common_name, sep, role_text = entry.rpartition("=")
        common_name = common_name.strip()
        where = f"setting tls_client_roles entry {entry!r}"
        if not sep or not common_name:
            raise AuthConfigError(f"{where}: expected 'COMMON_NAME=ROLE' or '*=ROLE'")
        role = Role.parse(role_text, where)
        if common_name == "*":
            default = role
        else:
            mapping[common_name] = role
    return mapping, default


@dataclass(frozen=True)
class Caller:
    """What a call presented: its authorization header values and a verified certificate CN."""

    authorization: tuple[str, ...]
    certificate_cn: str | None


@dataclass
class AccessPolicy:
    """Decides, per call, whether the caller's role suffices for the method."""

    tokens: TokenFile | None
    mutual_tls: bool
    client_roles: Mapping[str, Role]
    default_client_role: Role
    # The role of a caller without credentials; None when credentials are required.
    anonymous: Role | None

    @classmethod
    def create(
        cls,
        *,
        tokens_file: Path | None,
        mutual_tls: bool,
        client_roles: Sequence[str] = (),
        insecure_local_admin: bool = False,
    ) -> AccessPolicy:
        """The policy for the configured credentials (AuthConfigError on a bad file).

        ServerSettings refuses `insecure_local_admin` together with credentials; should both
        arrive here anyway, the credentials are required (the safer reading).
        """
        tokens = TokenFile(tokens_file) if tokens_file is not None else None
        mapping, default = parse_client_roles(client_roles)
        if tokens is not None or mutual_tls:
            anonymous = None
        else:
            anonymous = Role.ADMIN if insecure_local_admin else Role.INFER
        return cls(tokens, mutual_tls, mapping, default, anonymous)

    @property
    def credentials_configured(self) -> bool:
        return self.tokens is not None or self.mutual_tls

    def needs_check(self, method: str) -> bool:
        """False when every caller may call `method`: the handler then runs unwrapped."""
        needed = required_role(method)
        return needed is not None and self.anonymous_lacks(needed)

    def anonymous_lacks(self, role: Role) -> bool:
        """Whether a caller without credentials lacks `role`."""
        return self.anonymous is None or self.anonymous < role

    def authorize(self, method: str, caller: Caller) -> Role | None:
        """The caller's role, or Unauthenticated / PermissionDenied naming method and role."""
        needed = required_role(method)
        if needed is None:
            return None
        return self.require(needed, method.lstrip("/"), caller)

    def require(self, needed: Role, shown: str, caller: Caller) -> Role:
        """The caller's role if it has `needed`; else the errors of `authorize` naming `shown`."""
        roles = [r for r in (self._token_role(shown, caller), self._cert_role(caller)) if r]
        role = max(roles) if roles else self.anonymous
        if role is None:
            raise Unauthenticated(
                f"{shown} needs role '{needed.label}': expected credentials, received none; "
                "send metadata 'authorization: Bearer <token>'"
                + (" or a client certificate" if self.mutual_tls else "")
            )
        if role < needed:
            raise PermissionDenied(self._denied_message(shown, needed, role, bool(roles)))
        return role

    def _denied_message(self, shown: str, needed: Role, role: Role, credentialed: bool) -> str:
        if credentialed:
            return f"{shown} needs role '{needed.label}', the caller has role '{role.label}'"
        if not self.credentials_configured:
            return (
                f"{shown} needs role '{needed.label}', and this server has no credentials "
                "configured, so admin calls are refused; start it with --auth-tokens-file FILE "
                "('TOKEN ROLE' lines) or mutual TLS (--tls-cert, --tls-key, --tls-client-ca), "
                "or, on one machine only, --insecure-local-admin (binds to 127.0.0.1)"
            )
        return f"{shown} needs role '{needed.label}', anonymous callers have '{role.label}'"

    def _token_role(self, shown: str, caller: Caller) -> Role | None:
        if not caller.authorization or self.tokens is None:
            return None
        if len(caller.authorization) > 1:
            raise Unauthenticated(
                f"{shown}: expected one 'authorization' header, received "
                f"{len(caller.authorization)}"
            )
        value = caller.authorization[0]
        if value[: len(_BEARER)].lower() != _BEARER:
            raise Unauthenticated(
                f"{shown}: expected 'authorization: Bearer <token>', received another scheme"
            )
        role = self.tokens.role_of(value[len(_BEARER) :].strip())
        if role is None:
            raise Unauthenticated(f"{shown}: the bearer token is not valid")
        return role

    def _cert_role(self, caller: Caller) -> Role | None:
        if not self.mutual_tls or caller.certificate_cn is None:
            return None
        return self.client_roles.get(caller.certificate_cn, self.default_client_role)


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The credentials a call presented."""
    authorization = tuple(
        str(value)
        for key, value in (context.invocation_metadata() or ())
        if key.lower() == "authorization"
    )
    # x509 fields exist only for a peer certificate the TLS handshake verified.
    names = list(context.auth_context().get("x509_common_name") or [])
    common_name = names[0].decode("utf-8", "replace") if names else None
    return Caller(authorization, common_name)


Behaviour = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class AccessGuard:
    """Wraps each method handler that not every caller may use with the access policy.

    Applied once, when the services are registered, so a call to a method every caller may
    use (ModelInfer, without credentials configured) costs nothing per call.
    """

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    def wrap(self, method: str, handler: Handler) -> Handler:
        """`handler` for the full method name `method`, checked first when it needs a role."""
        if not self.policy.needs_check(method):
            return handler
        return _guarded(handler, self._checker(method))

    def _checker(
        self, method: str
    ) -> Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                self.policy.authorize(method, caller_of(context))
            except ServerError as error:
                log.info("refused a call from %s: %s", context.peer(), error)
                raise

        return check


def _guarded(
    handler: Handler,
    check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]],
) -> Handler:
    """The same handler, with `check` run first in the call's own context.

    A method with one request message is served as a request-streaming one: gRPC reads a
    unary request before the handler starts, but a stream message only when the handler asks,
    so a refused caller's message is never read (at most the flow-control window is buffered).
    """
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _checked_call(_one_request(handler.unary_unary), check), **codecs
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _checked_call(handler.stream_unary, check), **codecs
        )
    if handler.unary_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _checked_stream(_one_request(handler.unary_stream), check), **codecs
        )
    assert handler.stream_stream is not None, "a method handler has one behaviour"
    return grpc.stream_stream_rpc_method_handler(
        _checked_stream(handler.stream_stream, check), **codecs
    )


def _one_request(inner: Behaviour) -> Behaviour:
    """A unary-request behaviour taking a request stream: it reads the one message first."""

    async def first_message(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request = await anext(requests, None)
        if request is None:
            raise InvalidArgument("request: expected one request message, received none")
        return request

    if inspect.isasyncgenfunction(inner):

        async def stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async for reply in inner(await first_message(requests, context), context):
                yield reply

        return stream

    async def call(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await inner(await first_message(requests, context), context)

    return call


def _checked_call(
    inner: Behaviour, check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
) -> Behaviour:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await check(context)
        return await inner(request, context)

    return call


def _checked_stream(
    inner: Behaviour, check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
) -> Behaviour:
    if not inspect.isasyncgenfunction(inner):
        # A streaming handler may also be a coroutine that writes with context.write().
        return _checked_call(inner, check)

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await check(context)
        async for reply in inner(request, context):
            yield reply

    return stream
