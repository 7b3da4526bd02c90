"""Streams whose client writes and never reads: does the server's memory stay bounded?

Starts a server on the built-in `simple` model, opens `--streams` ModelStreamInfer streams (one
channel each) whose writers send requests as fast as gRPC takes them for `--duration-s`
seconds and never read, sampling the server's RSS every `--sample-s` seconds. Then it cancels
the streams and checks that the server still answers. Prints RSS at the start, the peak, at the
end of the writing and after the cancel; requests written and requests the server executed
(ModelStatistics). Stops early, and says so, when the server's RSS passes `--max-rss-mib` (the
machine is shared). `--server-python` runs another checkout's server (its virtualenv's python)
for a before/after comparison.

    python benchmarks/stream_backpressure.py --streams 50 --duration-s 60
    python benchmarks/stream_backpressure.py --streams 1 --duration-s 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, start

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

MODEL = "simple"
TIMEOUT_S = 30.0


@dataclass
class Report:
    """What one run measured."""

    streams: int
    duration_s: float
    rss_start_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    rss_after_cancel_mib: float
    requests_written: int
    requests_executed: int
    stopped_early: bool
    server_live_after: bool


def simple_request(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, id=str(i))
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return request


async def executed(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=TIMEOUT_S)
    return int(stats.model_stats[0].inference_stats.success.count)


async def writer(address: str, written: list[int], index: int) -> None:
    """Write requests on one stream until cancelled; never read."""
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    call = stub.ModelStreamInfer()
    request = simple_request(index)
    try:
        while True:
            await call.write(request)
            written[index] += 1
    finally:
        call.cancel()
        await channel.close(None)


async def run(args: argparse.Namespace, server: ServerUnderTest) -> Report:
    channel = grpc.aio.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    before = await executed(stub)
    rss_start = server.rss_mib()
    peak = rss_start
    written = [0] * args.streams
    writers = [asyncio.create_task(writer(server.address, written, i)) for i in range(args.streams)]
    stopped_early = False
    deadline = time.monotonic() + args.duration_s
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(args.sample_s, left))
        rss = server.rss_mib()
        peak = max(peak, rss)
        print(
            f"{args.duration_s - max(left - args.sample_s, 0):6.1f} s  RSS {rss:8.1f} MiB  "
            f"written {sum(written)}",
            flush=True,
        )
        if rss > args.max_rss_mib:
            stopped_early = True
            break
    rss_end = server.rss_mib()
    done = await executed(stub) - before
    for task in writers:
        task.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    # Give the server a moment to tear the cancelled streams down before the last sample.
    await asyncio.sleep(args.settle_s)
    try:
        live = (await stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S)).live
    except grpc.aio.AioRpcError:
        live = False
    rss_after = server.rss_mib()
    await channel.close(None)
    return Report(
        args.streams,
        args.duration_s,
        round(rss_start, 1),
        round(max(peak, rss_end), 1),
        round(rss_end, 1),
        round(rss_after, 1),
        sum(written),
        done,
        stopped_early,
        live,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--max-rss-mib", type=float, default=6144.0)
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    args = parser.parse_args()
    # No repository: the server serves its built-in `simple` model.
    server = start(None, args.server_arg, python=args.server_python)
    try:
        report = asyncio.run(run(args, server))
    finally:
        status = server.stop()
    print(json.dumps({**asdict(report), "server_exit": status}))
    return 0 if report.server_live_after and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
