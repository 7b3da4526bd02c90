"""The gRPC health service, with the health of a model behind the access policy.

The server's health (service "", and "inference.GRPCInferenceService" as Triton names it) stays
open: Kubernetes probes carry no credentials. A model's
health (its name as the service) tells whether that model exists, so when credentials are
configured it needs role ``infer``. A caller without it gets UNAUTHENTICATED (or
PERMISSION_DENIED) for every name, known or not, before the name is looked up: the answer
tells it to send credentials and nothing about which models exist.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from trtserve.server.api.auth import AccessPolicy, Role, caller_of
from trtserve.server.errors import ServerError

log = logging.getLogger(__name__)

_SERVICE = "grpc.health.v1.Health"
# The server's own health: "" and, as Triton answers it, the inference service's name. Both
# stay open to callers without credentials (probes); any other name is a model's.
SERVER_HEALTH_NAMES = ("", "inference.GRPCInferenceService")
# grpcio-health-checking's asyncio servicer is missing from the type stubs.
_AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


class GuardedHealthServicer(_AsyncHealthServicer):  # type: ignore[misc]
    """grpc's asyncio health servicer; Check and Watch of a model name need role infer."""

    def __init__(self, policy: AccessPolicy) -> None:
        super().__init__()
        self._policy = policy

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await self._authorize("Check", request, context)
        return await super().Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._authorize("Watch", request, context)
        await super().Watch(request, context)

    async def _authorize(
        self,
        method: str,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        if request.service in SERVER_HEALTH_NAMES or not self._policy.anonymous_lacks(Role.INFER):
            return
        try:
            self._policy.require(Role.INFER, f"{_SERVICE}/{method} of a model", caller_of(context))
        except ServerError as error:
            log.info("refused a call from %s: %s", context.peer(), error)
            raise
