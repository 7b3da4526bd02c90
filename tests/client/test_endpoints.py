"""Several server addresses: round-robin, failover on UNAVAILABLE, gRPC's retry config."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from server_process import ServerProcess, start_server

from trtserve.client import AsyncInferenceClient, InferenceClient, InferenceServerError, InferInput
from trtserve.client.endpoints import (
    RETRYABLE_METHODS,
    EndpointRing,
    RetryPolicy,
    addresses_of,
)


def simple_inputs() -> list[InferInput]:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    return [InferInput("INPUT0", x), InferInput("INPUT1", x)]


def successes(address: str) -> int:
    with InferenceClient(address, timeout=30) as client:
        return sum(s.success.count for s in client.model_statistics("simple"))


@pytest.fixture
def two_servers() -> Iterator[list[ServerProcess]]:
    servers = [start_server(), start_server()]
    yield servers
    for server in servers:
        server.kill()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ring_goes_round_and_puts_failed_endpoints_last_until_cooldown() -> None:
    clock = FakeClock()
    ring = EndpointRing(3, cooldown_s=5.0, clock=clock)
    assert [ring.order()[0] for _ in range(4)] == [0, 1, 2, 0]
    ring.mark_down(2)
    assert ring.order() == [1, 0, 2]  # its turn started at 1; 2 is tried last
    assert ring.order() == [0, 1, 2]  # 2's turn: skipped while cooling down
    clock.now += 5.0
    assert ring.order() == [0, 1, 2]
    assert ring.order()[0] == 1
    ring.mark_down(1)
    ring.mark_up(1)
    assert ring.order()[0] == 2


def test_addresses_and_policy_are_checked() -> None:
    assert addresses_of("a:1") == ("a:1",)
    assert addresses_of(["a:1", " b:2 "]) == ("a:1", "b:2")
    for bad in ([], [""], ""):
        with pytest.raises(ValueError, match="address"):
            addresses_of(bad)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=6)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(initial_backoff_s=2.0, max_backoff_s=1.0)


def test_service_config_retries_only_safe_methods_on_unavailable() -> None:
    config = json.loads(RetryPolicy(max_attempts=4).service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    names = {n["method"] for n in method_config["name"]}
    assert names == RETRYABLE_METHODS
    assert "RepositoryModelLoad" not in names and "ModelStreamInfer" not in names
    retry = method_config["retryPolicy"]
    assert retry["maxAttempts"] == 4
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert (
        "retryPolicy"
        not in json.loads(RetryPolicy(max_attempts=1).service_config())["methodConfig"][0]
    )


def test_calls_alternate_between_servers(two_servers: list[ServerProcess]) -> None:
    before = [successes(s.address) for s in two_servers]
    with InferenceClient([s.address for s in two_servers], timeout=30) as client:
        assert client.addresses == tuple(s.address for s in two_servers)
        for _ in range(4):
            client.infer("simple", simple_inputs())
    after = [successes(s.address) for s in two_servers]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]


def test_calls_succeed_through_the_other_server_when_one_stops(
    two_servers: list[ServerProcess],
) -> None:
    first, second = two_servers
    with InferenceClient([first.address, second.address], timeout=30) as client:
        assert client.server_ready()
        assert first.terminate() == 0
        before = successes(second.address)
        for _ in range(4):
            result = client.infer("simple", simple_inputs())
            expected = 2 * np.arange(16, dtype=np.float32).reshape(1, 16)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)
            assert client.server_live()
        assert successes(second.address) - before == 4
        # An error that is not UNAVAILABLE is the answer, not a reason to try elsewhere.
        with pytest.raises(InferenceServerError) as error:
            client.infer("no-such-model", simple_inputs())
        assert error.value.code == grpc.StatusCode.NOT_FOUND
        assert second.terminate() == 0
        with pytest.raises(InferenceServerError) as error:
            client.server_ready()
        assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_async_client_fails_over(two_servers: list[ServerProcess]) -> None:
    first, second = two_servers
    assert first.terminate() == 0

    async def main() -> list[bool]:
        async with AsyncInferenceClient([first.address, second.address], timeout=30) as client:
            ready = []
            for _ in range(3):
                await client.infer("simple", simple_inputs())
                ready.append(await client.model_ready("simple"))
            return ready

    before = successes(second.address)
    assert asyncio.run(main()) == [True, True, True]
    assert successes(second.address) - before == 3
