"""Connections over real sockets: exclusive ports, the connection cap, keepalive.

A second server on a port in use must fail to start (grpc would share the port by default);
idle TCP connections must not use up the file descriptors a model load needs; a peer that
stops answering must be disconnected by keepalive pings.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from rest_calls import call
from served import Served, serving, status_of, wait_for
from server_process import ServerProcess, serve_fails, spawn
from tiny_models import add_config, add_constant_model, add_request, output_of, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

TIMEOUT_S = 20.0


def start(repository: Path, *args: str, fd_limit: int | None = None) -> ServerProcess:
    """`trtserve serve` on free loopback ports, under `prlimit` when `fd_limit` is given."""
    command = [sys.executable, "-u", "-m", "trtserve.cli.main", "serve", "--host", "127.0.0.1"]
    command += ["--grpc-port", "0", "--metrics-port", "0", "--insecure-local-admin"]
    command += ["--repository", str(repository), *args]
    if fd_limit is not None:
        # Soft limit below the hard one: the server raises it to the hard limit first.
        command = ["prlimit", f"--nofile={fd_limit // 2}:{fd_limit}", "--", *command]
    return spawn(command, os.environ)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    repository = tmp_path / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    with serving(start(repository), repository) as served:
        yield served


# --- exclusive ports ------------------------------------------------------------------------


def test_a_second_server_on_the_grpc_port_fails_naming_it(served: Served) -> None:
    port = served.process.grpc_port
    output = serve_fails(["--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1"])
    assert f"setting grpc_port: cannot listen on 127.0.0.1:{port}" in output, output
    assert "Traceback" not in output
    # The first server keeps serving every new connection.
    for _ in range(20):
        with grpc.insecure_channel(served.process.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live


def test_a_second_server_on_the_http_port_fails_naming_it(served: Served) -> None:
    port = served.process.http_port
    output = serve_fails(["--host", "127.0.0.1", "--http-port", str(port), "--metrics-port", "-1"])
    assert f"setting http_port: cannot listen on 127.0.0.1:{port}: in use" in output, output
    assert "Traceback" not in output
    assert call(served.process.http_address, "GET", "/v2/health/ready").status == 200


def test_a_second_server_on_the_metrics_port_fails_naming_it(served: Served) -> None:
    port = served.process.metrics_port
    output = serve_fails(["--host", "127.0.0.1", "--metrics-port", str(port)])
    assert f"setting metrics_port: cannot listen on 127.0.0.1:{port}: in use" in output, output
    assert "Traceback" not in output


def test_a_start_that_fails_leaves_no_temporary_repository(served: Served, tmp_path: Path) -> None:
    """Without --repository the built-in models are written to a temporary folder: a start
    that fails after that (here on the metrics port) removes it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    port = served.process.metrics_port
    command = [sys.executable, "-m", "trtserve.cli.main", "serve", "--host", "127.0.0.1"]
    done = subprocess.run(
        [*command, "--grpc-port", "0", "--metrics-port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "built-in models" in done.stdout + done.stderr
    assert list(scratch.iterdir()) == []


# --- the connection cap ---------------------------------------------------------------------


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) for _ in range(count)]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock`; reads (and drops) what it sent before."""
    sock.settimeout(0)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def served_fresh(address: str) -> bool:
    """Whether a new connection gets an answer."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        return status_of(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=1))[0] == (
            grpc.StatusCode.OK
        )


def test_idle_connections_beyond_the_fd_limit_leave_room_for_loads_and_clients(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    # Raised from 100 to 200 at start; the default cap keeps 100 of them for everything else
    # and shares the rest between the gRPC and the HTTP port.
    process = start(repository, "--handshake-timeout-s", "1", fd_limit=200)
    channel = grpc.insecure_channel(process.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    idle: list[socket.socket] = []
    try:
        assert any("accepting up to 50 gRPC connections" in line for line in process.output)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
        idle = idle_connections(process.grpc_port, 250)
        # Those over the cap are closed as they arrive, the rest after the handshake timeout.
        wait_for(lambda: sum(map(closed_by_server, idle)) >= 150, "connections cut", TIMEOUT_S)
        load = pb.RepositoryModelLoadRequest(model_name="loaded")
        load.parameters["config"].string_param = add_config("loaded")
        load.parameters["file:1/model.onnx"].bytes_param = add_constant_model(7.0)
        stub.RepositoryModelLoad(load, timeout=TIMEOUT_S)
        request, x = add_request("loaded")
        np.testing.assert_array_equal(output_of(stub.ModelInfer(request, timeout=TIMEOUT_S)), x + 7)
        wait_for(lambda: all(map(closed_by_server, idle)), "idle connections closed", TIMEOUT_S)
        assert served_fresh(process.address)
    finally:
        for sock in idle:
            sock.close()
        channel.close()
        assert process.terminate() == 0


def http_ready(address: str) -> bool:
    """Whether a new HTTP connection is answered ready (False: closed while the cap is full)."""
    try:
        return call(address, "GET", "/v2/health/ready").status == 200
    except OSError:
        return False


def test_http_connections_over_the_cap_are_closed_as_they_arrive(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    process = start(repository, "--max-connections", "5", "--http-port", "0")
    idle: list[socket.socket] = []
    try:
        idle = idle_connections(process.http_port, 8)
        wait_for(lambda: sum(map(closed_by_server, idle)) >= 3, "connections cut", TIMEOUT_S)
        assert sum(map(closed_by_server, idle)) == 3, "the first five stay open"
        refused = "HTTP connection refused: 5 connections open"
        assert any(refused in line for line in process.output)
        for sock in idle:
            sock.close()
        # Room again once the server has seen the idle ones go.
        wait_for(lambda: http_ready(process.http_address), "a fresh HTTP request", TIMEOUT_S)
    finally:
        for sock in idle:
            sock.close()
        assert process.terminate() == 0


# --- keepalive ------------------------------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = struct.pack(">I", 0)[1:] + bytes([0x4, 0]) + struct.pack(">I", 0)
_PING = 0x6


def frame_types(data: bytes) -> list[int]:
    """The types of the HTTP/2 frames in `data`."""
    types, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        types.append(data[offset + 3])
        offset += 9 + length
    return types


def test_a_peer_that_stops_answering_is_disconnected_by_keepalive(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    process = start(repository, "--keepalive-time-s", "0.5", "--keepalive-timeout-s", "0.5")
    try:
        # A peer that completes the HTTP/2 handshake, then never reads or answers again.
        with socket.create_connection(("127.0.0.1", process.grpc_port), timeout=10) as sock:
            sock.sendall(_PREFACE + _EMPTY_SETTINGS)
            received = b""
            while chunk := sock.recv(65536):  # b"": the server closed the connection
                received += chunk
        assert _PING in frame_types(received)
    except TimeoutError:
        pytest.fail("the server kept a silent peer's connection open for 10 s")
    finally:
        assert process.terminate() == 0
