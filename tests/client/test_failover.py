"""RoutedStub and AsyncRoutedStub over fake stubs: which endpoint is tried, and what is raised."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from trtserve.client.endpoints import AsyncRoutedStub, EndpointRing, RoutedStub


class FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class FakeStub:
    """Answers ModelInfer with its name, or raises `error`; counts its calls."""

    def __init__(self, name: str, error: grpc.RpcError | None = None) -> None:
        self.name, self.error, self.calls = name, error, 0
        self.asynchronous = False

    def ModelInfer(self, request: Any, timeout: float | None = None) -> Any:
        self.calls += 1
        return self._answer() if self.asynchronous else self._answer_now()

    def _answer_now(self) -> str:
        if self.error is not None:
            raise self.error
        return self.name

    async def _answer(self) -> str:
        return self._answer_now()


def unavailable() -> FakeError:
    return FakeError(grpc.StatusCode.UNAVAILABLE)


def route(stubs: list[FakeStub], asynchronous: bool) -> Any:
    for s in stubs:
        s.asynchronous = asynchronous
    ring = EndpointRing(len(stubs), cooldown_s=60.0)
    stub = (AsyncRoutedStub if asynchronous else RoutedStub)(stubs, ring)

    def call(timeout: float | None = None) -> Any:
        result = stub.ModelInfer(object(), timeout=timeout)
        return asyncio.run(result) if asynchronous else result

    return call


@pytest.mark.parametrize("asynchronous", [False, True])
def test_unavailable_moves_on_and_the_failed_endpoint_goes_last(asynchronous: bool) -> None:
    down, up = FakeStub("a", unavailable()), FakeStub("b")
    call = route([down, up], asynchronous)
    assert [call(), call(), call()] == ["b", "b", "b"]
    assert down.calls == 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_other_errors_are_not_sent_elsewhere(asynchronous: bool) -> None:
    denied, other = FakeStub("a", FakeError(grpc.StatusCode.INVALID_ARGUMENT)), FakeStub("b")
    call = route([denied, other], asynchronous)
    with pytest.raises(FakeError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert other.calls == 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_every_endpoint_unavailable_raises_the_last_error(asynchronous: bool) -> None:
    first, last = unavailable(), unavailable()
    stubs = [FakeStub("a", first), FakeStub("b", last)]
    with pytest.raises(FakeError) as raised:
        route(stubs, asynchronous)()
    assert raised.value is last
    assert [s.calls for s in stubs] == [1, 1]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_no_other_endpoint_is_tried_once_the_deadline_passed(asynchronous: bool) -> None:
    stubs = [FakeStub("a", unavailable()), FakeStub("b")]
    with pytest.raises(FakeError):
        route(stubs, asynchronous)(timeout=0.0)
    assert [s.calls for s in stubs] == [1, 0]
