"""A closed-loop load generator speaking the v2 protocol directly over grpc.aio.

`concurrency` workers share one or a few channels; each sends the same prebuilt ModelInfer
request (random raw inputs), waits for the answer and sends the next. After a warm-up, the
window counts the requests that complete in it: until `duration` seconds pass, or until
`requests` have completed. Latency is taken per request around the awaited call.

Run it in its own process, apart from the server under test, so that the two do not share an
interpreter lock; it prints one JSON object (LoadResult):

    python benchmarks/load.py --target 127.0.0.1:8001 --model simple \
        --input INPUT0:FP32:1,16 --input INPUT1:FP32:1,16 --concurrency 32 --duration 5

With `--server-pid`, it also reads the server's CPU time (user + system) at the window's ends
from /proc: all its threads, and its main thread alone (where asyncio servers run their event
loop), so the cost of a request on each side, and on the loop, can be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tensor_arg import TensorArg, tensor_argument

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol.allocator import reuse_freed_memory

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LoadConfig:
    """What to send, where, and for how long."""

    target: str
    model: str
    inputs: tuple[TensorArg, ...]
    concurrency: int
    channels: int = 1
    duration_s: float | None = 5.0
    # When set, the window ends after this many completed requests instead of a duration.
    requests: int | None = None
    warmup_s: float = 1.0
    server_pid: int | None = None
    seed: int = 0
    # Sent as 'authorization: Bearer TOKEN' when set.
    token: str | None = None


@dataclass(frozen=True)
class LoadResult:
    """What one window measured; latencies in ms, None when no request succeeded."""

    model: str
    concurrency: int
    channels: int
    count: int
    errors: dict[str, int]
    elapsed_s: float
    throughput: float
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    client_cpu_s: float
    server_cpu_s: float | None
    # The server's main thread alone: its event loop.
    server_loop_cpu_s: float | None
    # Every process on the machine (from /proc/stat), to tell whether others took CPU too.
    machine_cpu_s: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> LoadResult:
        return LoadResult(**json.loads(text))


def _cpu_s(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of a process: all its threads, and its main thread alone."""
    return _cpu_s(f"/proc/{pid}/stat"), _cpu_s(f"/proc/{pid}/task/{pid}/stat")


def build_request(model: str, inputs: Sequence[TensorArg], seed: int) -> pb.ModelInferRequest:
    """A ModelInferRequest with random raw inputs; every output is returned."""
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=model)
    for tensor in inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(tensor.random_bytes(rng))
    return request


# This process's CPU, the machine's, and the server's (all threads, main thread).
_Clocks = tuple[float, float, tuple[float, float] | None]


@dataclass
class _Window:
    """The measurement window: what completed in it, and the CPU clocks at its ends."""

    config: LoadConfig
    measuring: bool = False
    stopped: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    start_ns: int = 0
    end_ns: int = 0
    clocks_start: _Clocks = (0.0, 0.0, None)
    clocks_end: _Clocks = (0.0, 0.0, None)

    def _clocks(self) -> _Clocks:
        pid = self.config.server_pid
        return (
            time.process_time(),
            machine_cpu_s(),
            process_cpu_s(pid) if pid is not None else None,
        )

    def begin(self) -> None:
        self.clocks_start = self._clocks()
        self.start_ns = time.perf_counter_ns()
        self.measuring = True

    def end(self) -> None:
        if self.stopped:
            return
        self.end_ns = time.perf_counter_ns()
        self.clocks_end = self._clocks()
        self.measuring = False
        self.stopped = True
        self.done.set()

    def complete(self, started_ns: int, error: str | None) -> None:
        if not self.measuring:
            return
        if error is None:
            self.latencies_ns.append(time.perf_counter_ns() - started_ns)
        else:
            self.errors[error] += 1
        wanted = self.config.requests
        if wanted is not None and len(self.latencies_ns) + sum(self.errors.values()) >= wanted:
            self.end()

    def result(self) -> LoadResult:
        elapsed = (self.end_ns - self.start_ns) / 1e9
        lat = np.asarray(self.latencies_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = (
            (float(v) for v in np.percentile(lat, [50, 90, 99])) if lat.size else (None, None, None)
        )
        server_start, server_end = self.clocks_start[2], self.clocks_end[2]
        return LoadResult(
            model=self.config.model,
            concurrency=self.config.concurrency,
            channels=self.config.channels,
            count=int(lat.size),
            errors=dict(self.errors),
            elapsed_s=elapsed,
            throughput=lat.size / elapsed if elapsed > 0 else 0.0,
            mean_ms=float(lat.mean()) if lat.size else None,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            client_cpu_s=self.clocks_end[0] - self.clocks_start[0],
            server_cpu_s=_delta(server_start, server_end, 0),
            server_loop_cpu_s=_delta(server_start, server_end, 1),
            machine_cpu_s=self.clocks_end[1] - self.clocks_start[1],
        )


def _delta(
    start: tuple[float, float] | None, end: tuple[float, float] | None, index: int
) -> float | None:
    return end[index] - start[index] if start is not None and end is not None else None


async def _worker(
    stub: Any, request: pb.ModelInferRequest, window: _Window, token: str | None
) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    while not window.stopped:
        started = time.perf_counter_ns()
        try:
            await stub.ModelInfer(request, timeout=REQUEST_TIMEOUT_S, metadata=metadata)
            error = None
        except grpc.aio.AioRpcError as e:
            error = e.code().name
        window.complete(started, error)


async def _clock(config: LoadConfig, window: _Window) -> None:
    await asyncio.sleep(config.warmup_s)
    window.begin()
    if config.requests is None:
        assert config.duration_s is not None
        await asyncio.sleep(config.duration_s)
        window.end()


def _open_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Its own subchannel pool gives every channel its own TCP connection.
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


async def run_load(config: LoadConfig) -> LoadResult:
    """Drive the target with `concurrency` closed-loop workers and measure one window."""
    if config.concurrency < 1 or config.channels < 1:
        raise ValueError("concurrency and channels: expected 1 or more")
    if (config.requests is None) == (config.duration_s is None):
        raise ValueError("expected exactly one of a duration and a request count")
    channels = [_open_channel(config.target) for _ in range(config.channels)]
    try:
        for channel in channels:
            try:
                await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise ConnectionError(
                    f"{config.target}: no connection within {CONNECT_TIMEOUT_S:g} s"
                ) from None
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        request = build_request(config.model, config.inputs, config.seed)
        window = _Window(config)
        workers = [
            asyncio.create_task(_worker(stubs[i % len(stubs)], request, window, config.token))
            for i in range(config.concurrency)
        ]
        clock = asyncio.create_task(_clock(config, window))
        await window.done.wait()
        await asyncio.gather(clock, *workers)
        return window.result()
    finally:
        for channel in channels:
            await channel.close(None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        type=tensor_argument,
        help="NAME:DATATYPE:SHAPE of an input, e.g. INPUT0:FP32:1,16 (repeat per input)",
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels (connections)")
    parser.add_argument("--duration", type=float, default=5.0, help="window length, seconds")
    parser.add_argument("--requests", type=int, help="window length in requests (not seconds)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--server-pid", type=int, help="read this process's CPU time too")
    parser.add_argument("--token", help="bearer token to send with every request")
    args = parser.parse_args(argv)
    config = LoadConfig(
        target=args.target,
        model=args.model,
        inputs=tuple(args.input),
        concurrency=args.concurrency,
        channels=args.channels,
        duration_s=None if args.requests is not None else args.duration,
        requests=args.requests,
        warmup_s=args.warmup,
        server_pid=args.server_pid,
        token=args.token,
    )
    # As `trtserve bench` does: large messages reuse freed memory (trtserve.protocol.allocator).
    reuse_freed_memory()
    try:
        result = asyncio.run(run_load(config))
    except ConnectionError as error:
        print(f"load.py: {error}", file=sys.stderr)
        return 1
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
