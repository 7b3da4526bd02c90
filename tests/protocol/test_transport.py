"""The flow-control options both ends of the protocol set."""

from __future__ import annotations

import pytest

from trtserve.client import InferenceClient
from trtserve.client.sync import channel_options
from trtserve.protocol.transport import DEFAULT_WINDOW_BYTES, flow_control_options


def test_a_window_turns_probing_off_and_fixes_the_size() -> None:
    assert flow_control_options(1 << 20) == [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 1 << 20),
    ]
    assert dict(flow_control_options())["grpc.http2.lookahead_bytes"] == DEFAULT_WINDOW_BYTES


def test_zero_leaves_grpc_defaults() -> None:
    assert flow_control_options(0) == []
    assert dict(channel_options(1 << 20, 0)) == {
        "grpc.max_send_message_length": 1 << 20,
        "grpc.max_receive_message_length": 1 << 20,
    }


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_bytes: expected 0 or more, received -5"):
        flow_control_options(-5)


@pytest.mark.parametrize("window_bytes", [0, 64 << 10, DEFAULT_WINDOW_BYTES])
def test_clients_with_any_window_are_served(server_address: str, window_bytes: int) -> None:
    # The server runs with its default fixed window; a client with gRPC's own or another
    # fixed window still gets answers (HTTP/2 windows are per receiver).
    with InferenceClient(server_address, timeout=30, window_bytes=window_bytes) as client:
        assert client.server_ready()
