"""Overload: offer several times the measured capacity, then check the server sheds and recovers.

Three phases against one server (started here, model `dense`: FP32 [batch, width] through
`layers` MatMul+Relu, dynamic batching up to 8, one instance, a queue of `--queue` requests):

1. capacity: a closed loop of `--concurrency` clients for `--phase-s` seconds; completed
   requests per second is the capacity.
2. overload: an open loop sends `--factor` x capacity requests per second for `--overload-s`
   seconds, each on its own, whatever the answers. Admitted requests must keep a bounded
   latency (about the queue's length in batches), the rest must get RESOURCE_EXHAUSTED fast.
3. recovery: the closed loop again; throughput back to capacity, no errors.

The server's RSS and open file descriptors are sampled every 0.5 s throughout. Prints a
report (and `--json FILE`); exits 1 when a check fails: an error other than
RESOURCE_EXHAUSTED, admitted p99 over `--max-admitted-p99-ms`, RSS growing more than
`--max-rss-growth-mib` between the end of phase 1 and the end of phase 3, or recovery under
80 % of capacity.

    python benchmarks/overload.py --phase-s 10 --overload-s 20 --factor 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, percentile, start

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.default_model import build_dense_model

MODEL = "dense"
REQUEST_TIMEOUT_S = 30.0
# The message of the first answer of each unexpected status, for the report.
FIRST_DETAILS: dict[str, str] = {}


def dense_config(width: int, queue: int) -> str:
    return f"""\
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ {width} ] }} ]
output [ {{ name: "y", data_type: TYPE_FP32, dims: [ {width} ] }} ]
dynamic_batching {{
  max_queue_delay_microseconds: 500
  default_queue_policy {{ max_queue_size: {queue} }}
}}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""


def write_repository(root: Path, width: int, layers: int, queue: int) -> None:
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(dense_config(width, queue))
    (root / MODEL / "1" / "model.onnx").write_bytes(build_dense_model(width, layers))


def request_for(width: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, width])
    x = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    request.raw_input_contents.append(x.tobytes())
    return request


@dataclass
class Outcome:
    """One request: its status and how long it took."""

    code: str
    latency_ms: float


@dataclass
class Phase:
    """What one phase saw."""

    name: str
    seconds: float
    offered_per_s: float
    completed_per_s: float
    codes: dict[str, int]
    ok_p50_ms: float
    ok_p99_ms: float
    ok_max_ms: float
    shed_fraction: float
    shed_p50_ms: float
    shed_p99_ms: float

    @classmethod
    def of(cls, name: str, seconds: float, outcomes: list[Outcome]) -> Phase:
        ok = [o.latency_ms for o in outcomes if o.code == "OK"]
        shed = [o.latency_ms for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
        return cls(
            name,
            round(seconds, 2),
            round(len(outcomes) / seconds, 1),
            round(len(ok) / seconds, 1),
            dict(Counter(o.code for o in outcomes)),
            round(percentile(ok, 50), 2),
            round(percentile(ok, 99), 2),
            round(max(ok, default=float("nan")), 2),
            round(len(shed) / max(len(outcomes), 1), 4),
            round(percentile(shed, 50), 2),
            round(percentile(shed, 99), 2),
        )


async def one(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> Outcome:
    started = time.perf_counter()
    try:
        await stub.ModelInfer(request, timeout=REQUEST_TIMEOUT_S)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
        if code != "RESOURCE_EXHAUSTED":
            FIRST_DETAILS.setdefault(code, error.details() or "")
    return Outcome(code, (time.perf_counter() - started) * 1000)


async def closed_loop(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    concurrency: int,
    seconds: float,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            outcomes.append(await one(stub, request))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def open_loop(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    rate: float,
    seconds: float,
) -> tuple[list[Outcome], float]:
    """Send `rate` requests a second for `seconds`, each independent of the answers."""
    tasks: list[asyncio.Task[Outcome]] = []
    start_t = time.monotonic()
    count = int(rate * seconds)
    for i in range(count):
        due = start_t + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(stub, request)))
    sent_s = time.monotonic() - start_t
    return list(await asyncio.gather(*tasks)), sent_s


@dataclass
class Samples:
    """RSS and open fds of the server, with the phase each sample was taken in."""

    points: list[tuple[float, str, float, int]] = field(default_factory=list)
    phase: str = "start"

    async def run(self, server: ServerUnderTest, stop: asyncio.Event) -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            self.points.append(
                (round(time.monotonic() - t0, 2), self.phase, server.rss_mib(), server.open_fds())
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    def last(self, phase: str) -> tuple[float, int]:
        rows = [(rss, fds) for _, p, rss, fds in self.points if p == phase]
        return rows[-1]

    def peak(self, phase: str) -> float:
        return max(rss for _, p, rss, _ in self.points if p == phase)


async def run(args: argparse.Namespace, server: ServerUnderTest) -> dict[str, Any]:
    request = request_for(args.width)
    channel = grpc.aio.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    samples = Samples()
    stop = asyncio.Event()
    sampler = asyncio.create_task(samples.run(server, stop))
    await closed_loop(stub, request, args.concurrency, 2.0)  # warm-up
    samples.phase = "capacity"
    outcomes = await closed_loop(stub, request, args.concurrency, args.phase_s)
    capacity = Phase.of("capacity", args.phase_s, outcomes)
    samples.phase = "overload"
    rate = args.factor * capacity.completed_per_s
    t0 = time.monotonic()
    outcomes, sent_s = await open_loop(stub, request, rate, args.overload_s)
    overload = Phase.of("overload", time.monotonic() - t0, outcomes)
    overload.offered_per_s = round(len(outcomes) / sent_s, 1)
    samples.phase = "recovery"
    outcomes = await closed_loop(stub, request, args.concurrency, args.phase_s)
    recovery = Phase.of("recovery", args.phase_s, outcomes)
    await asyncio.sleep(1.0)
    samples.phase = "end"
    await asyncio.sleep(0.6)
    stop.set()
    await sampler
    await channel.close(None)
    rss_before, fds_before = samples.last("capacity")
    rss_after, fds_after = samples.last("end")
    return {
        "phases": [asdict(capacity), asdict(overload), asdict(recovery)],
        "rss_mib": {
            "end_of_capacity": round(rss_before, 1),
            "peak_in_overload": round(samples.peak("overload"), 1),
            "after_recovery": round(rss_after, 1),
        },
        "open_fds": {"end_of_capacity": fds_before, "after_recovery": fds_after},
        "first_details": FIRST_DETAILS,
        "samples": samples.points,
    }


def checks(args: argparse.Namespace, report: dict[str, Any]) -> list[str]:
    """What failed, in words; empty when the server behaved."""
    capacity, overload, recovery = report["phases"]
    failures = []
    for phase in (capacity, overload, recovery):
        other = {c: n for c, n in phase["codes"].items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
        if other:
            failures.append(f"{phase['name']}: errors other than RESOURCE_EXHAUSTED: {other}")
    if overload["ok_p99_ms"] > args.max_admitted_p99_ms:
        failures.append(
            f"overload: admitted p99 {overload['ok_p99_ms']} ms > {args.max_admitted_p99_ms}"
        )
    if overload["shed_fraction"] <= 0:
        failures.append("overload: nothing was shed; offer more (--factor)")
    rss = report["rss_mib"]
    growth = rss["after_recovery"] - rss["end_of_capacity"]
    if growth > args.max_rss_growth_mib:
        failures.append(f"RSS grew {growth:.1f} MiB from capacity to after recovery")
    if recovery["completed_per_s"] < 0.8 * capacity["completed_per_s"]:
        failures.append("recovery: throughput below 80 % of capacity")
    return failures


def pin(server: ServerUnderTest, client_cpus: str, server_cpus: str) -> None:
    """Pin the server's threads and this process to CPU lists such as "0" and "1-3"."""
    subprocess.run(["taskset", "-a", "-p", "-c", server_cpus, str(server.pid)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    os.sched_setaffinity(0, cpu_list(client_cpus))


def cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def print_report(args: argparse.Namespace, report: dict[str, Any], failures: list[str]) -> None:
    print(
        f"model dense width {args.width} layers {args.layers}, queue {args.queue}, "
        f"factor {args.factor}"
    )
    print(
        f"{'phase':10} {'secs':>6} {'offered/s':>10} {'ok/s':>8} {'shed':>7} "
        f"{'ok p50':>8} {'ok p99':>8} {'ok max':>8} {'shed p50':>9} {'shed p99':>9}  codes"
    )
    for p in report["phases"]:
        print(
            f"{p['name']:10} {p['seconds']:6} {p['offered_per_s']:10} {p['completed_per_s']:8} "
            f"{p['shed_fraction']:7.1%} {p['ok_p50_ms']:8} {p['ok_p99_ms']:8} {p['ok_max_ms']:8} "
            f"{p['shed_p50_ms']:9} {p['shed_p99_ms']:9}  {p['codes']}"
        )
    print(f"RSS MiB: {report['rss_mib']}  open fds: {report['open_fds']}")
    if report["first_details"]:
        print(f"first message of each unexpected status: {report['first_details']}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--overload-s", type=float, default=20.0)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--queue", type=int, default=16)
    # Heavy enough that the model, not the Python client sharing the machine, is the limit.
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--max-admitted-p99-ms", type=float, default=250.0)
    parser.add_argument("--max-rss-growth-mib", type=float, default=16.0)
    parser.add_argument(
        "--pin",
        metavar="CLIENT_CPUS:SERVER_CPUS",
        help="pin this load generator and the server (all its threads) to separate CPUs, "
        "e.g. 0:1, so that they do not take each other's time",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_repository(Path(folder), args.width, args.layers, args.queue)
        server = start(Path(folder))
        if args.pin:
            client_cpus, server_cpus = args.pin.split(":")
            pin(server, client_cpus, server_cpus)
        try:
            report = asyncio.run(run(args, server))
        finally:
            report_exit = server.stop()
    report["server_exit_status"] = report_exit
    failures = checks(args, report)
    report["failures"] = failures
    print_report(args, report, failures)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
