"""Whether a client that sends its own keepalive pings keeps its connection while idle.

Starts `trtserve serve` on loopback (built-in models), connects a channel that pings every
`--ping-s` seconds between calls too (grpc.keepalive_time_ms, keepalive_permit_without_calls),
makes one call, stays idle for `--idle-s` seconds and prints the channel's state changes. A
server that finds the pings too frequent sends GOAWAY "too_many_pings" and the channel drops
to IDLE.

    python benchmarks/client_pings.py                          # this install
    ../old/.venv/bin/python benchmarks/client_pings.py # an older install

Bounded: about `--idle-s` plus the start; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import launch

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ping-s", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=45.0)
    args = parser.parse_args()
    serve = ["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1"]
    server = launch(["-m", "trtserve.cli.main", *serve])
    options = [
        ("grpc.keepalive_time_ms", round(args.ping_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    states: list[tuple[float, str]] = []
    started = time.monotonic()
    try:
        with grpc.insecure_channel(server.address, options=options) as channel:
            channel.subscribe(
                lambda state: states.append((round(time.monotonic() - started, 1), state.name))
            )
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
            threading.Event().wait(args.idle_s)  # idle on purpose: only pings cross the wire
    finally:
        server.stop()
    dropped = [t for t, name in states if name in ("IDLE", "TRANSIENT_FAILURE") and t > 1]
    print(
        json.dumps(
            {
                "ping_s": args.ping_s,
                "idle_s": args.idle_s,
                "states": states,
                "dropped_at_s": dropped[0] if dropped else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
