"""ModelStreamInfer throughput for clients that read: requests a second over `--streams` streams.

Starts a server on the built-in `simple` model; each stream's writer sends `--requests`
requests as fast as gRPC takes them while its reader takes the replies, as tritonclient's
stream API does. Prints each run's replies without error a second and its error replies (a
model queue that overflows answers RESOURCE_EXHAUSTED), and the median; `--server-python`
runs another checkout's server for a before/after comparison.

    python benchmarks/stream_throughput.py --streams 1 --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import start
from stream_backpressure import simple_request

from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc


async def one_stream(address: str, count: int) -> int:
    """Send `count` requests on one stream while reading; the replies without error."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.ModelStreamInfer()
        request = simple_request(0)

        async def write() -> None:
            for _ in range(count):
                await call.write(request)
            await call.done_writing()

        writer = asyncio.create_task(write())
        answered = 0
        async for reply in call:
            answered += not reply.error_message
        await writer
        return answered


async def measure(address: str, streams: int, count: int) -> tuple[float, int]:
    """Replies without error a second, and the count of error replies."""
    started = time.perf_counter()
    answered = sum(await asyncio.gather(*(one_stream(address, count) for _ in range(streams))))
    return answered / (time.perf_counter() - started), streams * count - answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20000, help="per stream")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    args = parser.parse_args()
    # No repository: the server serves its built-in `simple` model.
    server = start(None, args.server_arg, python=args.server_python)
    try:
        asyncio.run(measure(server.address, args.streams, min(args.requests, 2000)))  # warm-up
        runs = [
            asyncio.run(measure(server.address, args.streams, args.requests))
            for _ in range(args.runs)
        ]
    finally:
        status = server.stop()
    rates = [rate for rate, _ in runs]
    report = {
        "streams": args.streams,
        "answered_per_s": [round(r) for r in rates],
        "error_replies": [errors for _, errors in runs],
    }
    print(json.dumps(report))
    print(f"median {statistics.median(rates):.0f} answered/s; server exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
