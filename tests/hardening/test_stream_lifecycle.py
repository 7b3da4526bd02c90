"""ModelStreamInfer in-process: failures, the in-flight cap and cancellation, step by step.

The servicer's per-request inference (`_infer`) is replaced by a scripted one, so each test
controls when a request finishes, fails or hangs; everything else is the real stream code.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.api.infer_wire import InferMessage
from trtserve.server.api.inference_servicer import InferenceServicer
from trtserve.server.app import request_limits
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.dataplane.serving_state import ServingState
from trtserve.server.settings import ServerSettings

STEP_TIMEOUT_S = 5.0


class ScriptedServicer(InferenceServicer):
    """A servicer whose requests run `behaviour(request)` instead of a model."""

    def __init__(self, cap: int, behaviour: Callable[[pb.ModelInferRequest], Any]) -> None:
        limits = request_limits(ServerSettings(max_stream_in_flight=cap))
        plane = DataPlane(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            ServingState(),
            "test",
            limits,
            None,  # type: ignore[arg-type]
            0,
        )
        super().__init__(plane)
        self.behaviour = behaviour

    async def _infer(self, parsed: Any, deadline: Any, encode: Any) -> Any:
        request = parsed.message
        await self.behaviour(request)
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)


def request(request_id: str) -> InferMessage:
    """A stream request as the server parses it (infer_wire)."""
    return InferMessage(pb.ModelInferRequest(model_name="m", id=request_id), ())


async def from_list(requests: list[InferMessage]) -> AsyncIterator[InferMessage]:
    for r in requests:
        yield r


def stream(
    servicer: InferenceServicer, requests: AsyncIterator[InferMessage]
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    return servicer.ModelStreamInfer(requests, None)  # type: ignore[arg-type]


def test_an_unexpected_failure_is_an_error_response_naming_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def behaviour(r: pb.ModelInferRequest) -> None:
        if r.id == "boom":
            raise KeyError("scripted")

    async def main() -> list[pb.ModelStreamInferResponse]:
        servicer = ScriptedServicer(4, behaviour)
        requests = [request(i) for i in ("a", "boom", "b", "c")]
        return [reply async for reply in stream(servicer, from_list(requests))]

    replies = asyncio.run(asyncio.wait_for(main(), STEP_TIMEOUT_S))
    by_id = {r.infer_response.id: r for r in replies}
    assert sorted(by_id) == ["a", "b", "boom", "c"] and len(replies) == 4
    assert not any(by_id[i].error_message for i in ("a", "b", "c"))
    message = by_id["boom"].error_message
    # The client gets an id, never the exception; the log has both, and the request's id.
    found = re.fullmatch(r"internal error ([0-9a-f]{12}): the server log has the details", message)
    assert found, message
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert len(logged) == 1 and "'boom'" in logged[0].getMessage(), caplog.text
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is KeyError


def test_requests_read_never_run_ahead_of_replies_taken_by_more_than_the_cap() -> None:
    cap, count = 3, 40
    pulled = 0

    async def behaviour(r: pb.ModelInferRequest) -> None:
        return None

    async def requests() -> AsyncIterator[InferMessage]:
        nonlocal pulled
        for i in range(count):
            pulled += 1
            yield request(str(i))

    async def main() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        taken = 0
        async for _reply in stream(ScriptedServicer(cap, behaviour), requests()):
            taken += 1
            seen.append((taken, pulled))
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), STEP_TIMEOUT_S))
    assert len(seen) == count
    # The n-th reply is in the caller's hands: n - 1 slots are free again, one is not.
    for taken, pulled_then in seen:
        assert pulled_then <= cap + taken - 1, seen


def test_a_cancelled_stream_cancels_its_requests_and_leaves_no_task() -> None:
    started: list[str] = []
    cancelled: list[str] = []
    all_started = asyncio.Event()

    async def behaviour(r: pb.ModelInferRequest) -> None:
        started.append(r.id)
        if len(started) == 3:
            all_started.set()
        try:
            await asyncio.Event().wait()  # a request that never finishes
        except asyncio.CancelledError:
            cancelled.append(r.id)
            raise

    async def requests() -> AsyncIterator[InferMessage]:
        for i in range(3):
            yield request(str(i))
        await asyncio.Event().wait()  # a client that neither sends more nor closes

    async def main() -> tuple[list[str], set[asyncio.Task[Any]]]:
        replies = stream(ScriptedServicer(8, behaviour), requests())
        # gRPC cancels the handler's task when the client goes away.
        handler = asyncio.create_task(anext(replies))  # type: ignore[arg-type]
        await asyncio.wait_for(all_started.wait(), STEP_TIMEOUT_S)
        handler.cancel()
        await asyncio.wait([handler], timeout=STEP_TIMEOUT_S)
        assert handler.cancelled()
        await replies.aclose()  # type: ignore[attr-defined]
        # Read before asyncio.run cancels what is left at its end.
        return sorted(cancelled), asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    cancelled_in_time, left = asyncio.run(main())
    assert cancelled_in_time == ["0", "1", "2"]
    assert not left, left
