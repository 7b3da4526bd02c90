"""A bounded soak: mixed load for a fixed time while the server's RSS and open fds are sampled.

Against one server started here (--insecure-local-admin, --max-message-mb 4,
--max-tensor-elements 4096), for `--duration-s` seconds, all at once:

- `--concurrency` clients infer on `dense` (FP32 [batch, 1024], 4 layers), some streamed;
- a churn loop unloads and reloads model `churn` every `--churn-s` seconds;
- an uploader streams a new file for model `uploaded` every `--upload-s` seconds (versions
  1 to 3 in turn, overwritten) and infers on it;
- a prober sends a bad request every `--bad-s` seconds: wrong datatype, wrong shape, unknown
  model, too many elements, a message over the limit, a path-traversal load, an upload whose
  sha256 does not match; each must get its expected status.

Every `--sample-s` seconds it prints the server's RSS, open fds and threads. At the end: the
counts of each outcome, and the trend: the median RSS and fds of the second quarter of the
samples against the last quarter (the first quarter is warm-up), and the least-squares slope
of RSS over the last three quarters. Exits 1 when an outcome was unexpected or RSS grew by more
than `--max-growth-mib` (or fds by more than 2) from the second quarter to the last.

    python benchmarks/soak.py --duration-s 600
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, start

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc
from trtserve.server.default_model import build_dense_model, build_simple_model

WIDTH = 1024
TIMEOUT_S = 30.0
DENSE_CONFIG = f"""\
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ {WIDTH} ] }} ]
output [ {{ name: "y", data_type: TYPE_FP32, dims: [ {WIDTH} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 200 }}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""
SIMPLE_CONFIG_JSON = json.dumps(
    {
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [
            {"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")
        ],
        "output": [
            {"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("OUTPUT0", "OUTPUT1")
        ],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
)
Outcomes = Counter[str]


def write_repository(root: Path) -> None:
    (root / "dense" / "1").mkdir(parents=True)
    (root / "dense" / "config.pbtxt").write_text(DENSE_CONFIG)
    (root / "dense" / "1" / "model.onnx").write_bytes(build_dense_model(WIDTH, 4))
    (root / "churn" / "1").mkdir(parents=True)
    (root / "churn" / "config.json").write_text(SIMPLE_CONFIG_JSON)
    (root / "churn" / "1" / "model.onnx").write_bytes(build_simple_model())


def dense_request(rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dense")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, WIDTH])
    request.raw_input_contents.append(np.ones((rows, WIDTH), np.float32).tobytes())
    return request


def simple_request(name: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name)
    for tensor in ("INPUT0", "INPUT1"):
        request.inputs.add(name=tensor, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return request


async def status(call: Awaitable[object]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


class Soak:
    """The load tasks; each records `<task> <status>` outcomes."""

    def __init__(self, channel: grpc.aio.Channel, args: argparse.Namespace, end: float) -> None:
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        self.uploads = tpb_grpc.ModelUploadStub(channel)  # type: ignore[no-untyped-call]
        self.args = args
        self.end = end
        self.outcomes: Outcomes = Counter()
        self.unexpected: Outcomes = Counter()

    def record(self, task: str, got: str, expected: str = "OK") -> None:
        self.outcomes[f"{task} {got}"] += 1
        if got != expected:
            self.unexpected[f"{task}: expected {expected}, received {got}"] += 1

    async def every(self, period: float, action: Callable[[int], Awaitable[None]]) -> None:
        tick = 0
        while time.monotonic() < self.end:
            started = time.monotonic()
            await action(tick)
            tick += 1
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def infer(self, worker: int) -> None:
        request = dense_request(1 + worker % 4)
        n = 0
        while time.monotonic() < self.end:
            n += 1
            if n % 50 == 0:
                replies = self.stub.ModelStreamInfer(iter([request] * 4), timeout=TIMEOUT_S)
                try:
                    errors = [r.error_message async for r in replies if r.error_message]
                    self.record("stream", "OK" if not errors else f"error {errors[0][:40]}")
                except grpc.aio.AioRpcError as error:
                    self.record("stream", error.code().name)
                continue
            self.record("infer", await status(self.stub.ModelInfer(request, timeout=TIMEOUT_S)))

    async def churn(self, tick: int) -> None:
        unload = pb.RepositoryModelUnloadRequest(model_name="churn")
        self.record(
            "unload", await status(self.stub.RepositoryModelUnload(unload, timeout=TIMEOUT_S))
        )
        load = pb.RepositoryModelLoadRequest(model_name="churn")
        self.record("load", await status(self.stub.RepositoryModelLoad(load, timeout=TIMEOUT_S)))
        self.record(
            "churn-infer",
            await status(self.stub.ModelInfer(simple_request("churn"), timeout=TIMEOUT_S)),
        )

    async def upload(self, tick: int) -> None:
        data = build_simple_model() + b""  # the same graph; a new file each time
        header = tpb.UploadHeader(
            model_name="uploaded",
            version=1 + tick % 3,
            filename="model.onnx",
            total_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            config_json=SIMPLE_CONFIG_JSON,
        )
        messages = [tpb.UploadRequest(header=header)] + [
            tpb.UploadRequest(data=data[i : i + 4096]) for i in range(0, len(data), 4096)
        ]
        self.record(
            "upload", await status(self.uploads.UploadModel(iter(messages), timeout=TIMEOUT_S))
        )
        self.record(
            "upload-infer",
            await status(self.stub.ModelInfer(simple_request("uploaded"), timeout=TIMEOUT_S)),
        )

    async def bad(self, tick: int) -> None:
        kind = tick % 7
        if kind == 0:
            request = dense_request()
            request.inputs[0].datatype = "INT64"
            got, expected, name = (
                await status(self.stub.ModelInfer(request)),
                "INVALID_ARGUMENT",
                "bad-dtype",
            )
        elif kind == 1:
            request = dense_request()
            request.inputs[0].shape[1] = WIDTH + 1
            got, expected, name = (
                await status(self.stub.ModelInfer(request)),
                "INVALID_ARGUMENT",
                "bad-shape",
            )
        elif kind == 2:
            request = simple_request("no-such-model")
            got, expected, name = (
                await status(self.stub.ModelInfer(request)),
                "NOT_FOUND",
                "unknown-model",
            )
        elif kind == 3:
            request = dense_request(8)  # 8192 elements: over the soak's limit of 4096
            got, expected, name = (
                await status(self.stub.ModelInfer(request)),
                "RESOURCE_EXHAUSTED",
                "elements",
            )
        elif kind == 4:
            request = dense_request()
            request.raw_input_contents[0] = bytes(5 * 1024 * 1024)
            got, expected, name = (
                await status(self.stub.ModelInfer(request)),
                "RESOURCE_EXHAUSTED",
                "too-large",
            )
        elif kind == 5:
            load = pb.RepositoryModelLoadRequest(model_name="churn")
            load.parameters["config"].string_param = SIMPLE_CONFIG_JSON
            load.parameters["file:1/../../escape"].bytes_param = b"x"
            got, expected, name = (
                await status(self.stub.RepositoryModelLoad(load)),
                "INVALID_ARGUMENT",
                "traversal",
            )
        else:
            header = tpb.UploadHeader(
                model_name="uploaded", version=9, filename="model.onnx", sha256="0" * 64
            )
            messages = [tpb.UploadRequest(header=header), tpb.UploadRequest(data=b"not this")]
            got, expected, name = (
                await status(self.uploads.UploadModel(iter(messages))),
                "INVALID_ARGUMENT",
                "bad-sha",
            )
        self.record(name, got, expected)


async def sample(
    server: ServerUnderTest, args: argparse.Namespace, end: float
) -> list[tuple[float, float, int, int]]:
    rows: list[tuple[float, float, int, int]] = []
    t0 = time.monotonic()
    print(f"{'t_s':>7} {'rss_mib':>8} {'fds':>5} {'threads':>8}", flush=True)
    while True:
        row = (
            round(time.monotonic() - t0, 1),
            round(server.rss_mib(), 1),
            server.open_fds(),
            server.threads(),
        )
        rows.append(row)
        print(f"{row[0]:7} {row[1]:8} {row[2]:5} {row[3]:8}", flush=True)
        if time.monotonic() >= end:
            return rows
        await asyncio.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))


def trend(rows: list[tuple[float, float, int, int]]) -> dict[str, float]:
    quarter = max(1, len(rows) // 4)
    second, last = rows[quarter : 2 * quarter], rows[-quarter:]
    kept = rows[quarter:]
    slope = 0.0
    if len(kept) >= 2:
        ts = [r[0] for r in kept]
        rss = [r[1] for r in kept]
        slope = statistics.linear_regression(ts, rss).slope * 3600
    return {
        "rss_mib_second_quarter": statistics.median(r[1] for r in second),
        "rss_mib_last_quarter": statistics.median(r[1] for r in last),
        "fds_second_quarter": statistics.median(r[2] for r in second),
        "fds_last_quarter": statistics.median(r[2] for r in last),
        "rss_slope_mib_per_hour": round(slope, 2),
        "rss_min_mib": min(r[1] for r in kept),
        "rss_max_mib": max(r[1] for r in kept),
    }


async def run(
    server: ServerUnderTest, args: argparse.Namespace
) -> tuple[Soak, list[tuple[float, float, int, int]]]:
    channel = grpc.aio.insecure_channel(
        server.address,
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ],
    )
    end = time.monotonic() + args.duration_s
    soak = Soak(channel, args, end)
    tasks = [asyncio.create_task(soak.infer(i)) for i in range(args.concurrency)]
    tasks += [
        asyncio.create_task(soak.every(args.churn_s, soak.churn)),
        asyncio.create_task(soak.every(args.upload_s, soak.upload)),
        asyncio.create_task(soak.every(args.bad_s, soak.bad)),
    ]
    rows = await sample(server, args, end)
    await asyncio.gather(*tasks)
    await channel.close(None)
    return soak, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--churn-s", type=float, default=1.0)
    parser.add_argument("--upload-s", type=float, default=2.0)
    parser.add_argument("--bad-s", type=float, default=0.05)
    parser.add_argument("--max-growth-mib", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_repository(Path(folder))
        server = start(
            Path(folder), ["--max-message-mb", "4", "--max-tensor-elements", str(4 * WIDTH)]
        )
        try:
            soak, rows = asyncio.run(run(server, args))
        finally:
            exit_status = server.stop()
    summary = trend(rows)
    failures = []
    if soak.unexpected:
        failures.append(f"unexpected outcomes: {dict(soak.unexpected)}")
    growth = summary["rss_mib_last_quarter"] - summary["rss_mib_second_quarter"]
    if growth > args.max_growth_mib:
        failures.append(f"RSS grew {growth:.1f} MiB from the second quarter to the last")
    if summary["fds_last_quarter"] - summary["fds_second_quarter"] > 2:
        failures.append("open file descriptors grew")
    if exit_status != 0:
        failures.append(f"server exit status {exit_status}")
    report = {
        "duration_s": args.duration_s,
        "outcomes": dict(sorted(soak.outcomes.items())),
        "trend": summary,
        "server_exit_status": exit_status,
        "failures": failures,
        "samples": rows,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
