"""Idle TCP connections against a server with a low open-file limit.

Starts `trtserve serve` on loopback under `prlimit --nofile=LIMIT:LIMIT` (built-in models,
--insecure-local-admin), connects one gRPC client, then opens `--idle` TCP connections that
never send a byte and keeps them open. Then it reports:

- whether a model load over the client's existing connection succeeds (it opens files),
- how many of the idle connections the server closed, and when,
- how long a new client waits to be served, and until every idle one is closed (each up to
  `--wait-s`).

    python benchmarks/idle_connections.py                      # 1,100 idle under 1,024 fds
    ../old/.venv/bin/python benchmarks/idle_connections.py   # an older install

The server runs with the interpreter that runs this script. Bounded: the whole run takes at
most about `--wait-s` plus the start, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import READY, ROOT

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.default_model import build_dense_model

CONFIG = """{"name": "loaded", "platform": "onnxruntime_onnx", "max_batch_size": 0,
  "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1, 16]}],
  "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1, 16]}]}"""


def start(fd_limit: int, extra: list[str]) -> tuple[subprocess.Popen[str], int, list[str]]:
    command = ["prlimit", f"--nofile={fd_limit}:{fd_limit}", "--", sys.executable, "-u"]
    command += ["-m", "trtserve.cli.main", "serve", "--host", "127.0.0.1", "--grpc-port", "0"]
    command += ["--metrics-port", "-1", "--insecure-local-admin", *extra]
    popen = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    lines: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.append(line)
            if not port and (m := READY.search(line)):
                port.append(int(m.group(2)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(120) or not port:
        popen.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))
    return popen, port[0], lines


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def load_model(stub: pb_grpc.GRPCInferenceServiceStub) -> str:
    request = pb.RepositoryModelLoadRequest(model_name="loaded")
    request.parameters["config"].string_param = CONFIG
    request.parameters["file:1/model.onnx"].bytes_param = build_dense_model(16, 1)
    try:
        stub.RepositoryModelLoad(request, timeout=30)
    except grpc.RpcError as error:
        return f"{error.code().name}: {(error.details() or '')[:160]}"
    return "OK"


def new_client_served(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=1).live)
        except grpc.RpcError:
            return False


def measure(port: int, idle_count: int, wait_s: float) -> dict[str, object]:
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
    idle: list[socket.socket] = []
    refused = 0
    for _ in range(idle_count):
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            refused += 1
    started = time.monotonic()
    time.sleep(0.5)  # let the server accept what it will before counting
    closed_at_once = sum(map(closed, idle))
    load = load_model(stub)
    served_after = None
    deadline = started + wait_s
    while time.monotonic() < deadline:
        if new_client_served(address):
            served_after = round(time.monotonic() - started, 2)
            break
    all_closed_after = None
    while time.monotonic() < deadline:
        if all(map(closed, idle)):
            all_closed_after = round(time.monotonic() - started, 2)
            break
        time.sleep(0.1)
    result: dict[str, object] = {
        "idle_opened": len(idle),
        "idle_refused_by_os": refused,
        "idle_closed_within_0_5_s": closed_at_once,
        "idle_closed_at_end": sum(map(closed, idle)),
        "all_idle_closed_after_s": all_closed_after,
        "load_over_existing_connection": load,
        "new_client_served_after_s": served_after,
    }
    for sock in idle:
        sock.close()
    channel.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=1100, help="idle TCP connections to open")
    parser.add_argument("--fd-limit", type=int, default=1024, help="the server's RLIMIT_NOFILE")
    parser.add_argument("--wait-s", type=float, default=30.0, help="longest wait for a client")
    parser.add_argument("server_args", nargs="*", help="more `trtserve serve` flags (after --)")
    args = parser.parse_args()
    popen, port, lines = start(args.fd_limit, args.server_args)
    try:
        result = measure(port, args.idle, args.wait_s)
    finally:
        popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
    result["fd_limit"] = args.fd_limit
    result["server_log_lines"] = len(lines)
    result["server_args"] = args.server_args
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
