"""Instances of the 11.0.0.114 plan on one GPU against two GPUs of one host, at concurrency 16.

    python benchmarks/multi_gpu_bench.py --runtimes-dir /tmp/lean --plans .gpu/plans \\
        --out results/multi_gpu.json

Rounds alternate between the layouts so that drift on the machine hits all alike.

(a) backend: TensorRT instances in this process, 16 threads taking an idle instance each
    (what the server's scheduler does), no gRPC: 1 and 4 instances on GPU 0, 2 + 2 on GPUs 0
    and 1, and 4 + 4; with the mean host and GPU time of one execution;
(b) server: `trtserve serve` driven by load.py (grpc.aio, a prebuilt request) from its own
    process at concurrency 16, with the server's CPU time: one process with 4 instances on
    GPU 0 or 2 + 2 on both GPUs; two processes, one per GPU with 2 instances each, each driven
    at concurrency 8; and the one-GPU model in a server with glibc's malloc defaults
    (`--malloc-keep-mb 0`, see trtserve.protocol.allocator);
(c) the protocol floor: floor_server.py answering the same 3.2 MB response without doing
    anything, at concurrency 16: what one Python gRPC process can do with messages this size,
    so the most one server process could reach whatever the GPUs do.

Writes the JSON to --out and a markdown table beside it (.md), and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import (
    breakdown_line,
    gpu_name,
    make_input,
    server_breakdown,
    write_report,
)
from server_under_test import ServerUnderTest, launch, start

from trtserve.protocol.allocator import reuse_freed_memory

PLAN_NAME = "conv_relu_trt11.0.0.114.plan"
INPUT = "x:FP32:1,3,224,224"
OUTPUT = "output0:FP32:1,16,222,222"
CONCURRENCY = 16
# A placement: the GPUs, and how many instances on each.
Layout = tuple[tuple[int, ...], int]
BACKEND_LAYOUTS: dict[str, Layout] = {
    "1 GPU, 1": ((0,), 1),
    "1 GPU, 4": ((0,), 4),
    "2 GPUs, 2 + 2": ((0, 1), 2),
    "2 GPUs, 4 + 4": ((0, 1), 4),
}
# Server models by name; `conv_gpu1` lives in a second process.
MODELS: dict[str, Layout] = {
    "conv_1gpu": ((0,), 4),
    "conv_2gpu": ((0, 1), 2),
    "conv_gpu0": ((0,), 2),
}
SECOND_PROCESS_MODELS: dict[str, Layout] = {"conv_gpu1": ((1,), 2)}


@dataclass
class Row:
    """One measured window."""

    part: str
    layout: str
    round: int
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    # Server CPU seconds per request: all threads, and the event-loop (main) thread alone.
    server_cpu_ms: float | None = None
    server_loop_ms: float | None = None
    # Share of the window the server's main thread was on a CPU.
    loop_busy: float | None = None
    # Backend only: mean milliseconds of one `execute` call, and of its parts as the instance
    # reports them (input: staging + H2D copy; infer: the engine, by CUDA events; output: D2H
    # copy + copying out of pinned memory).
    execute_ms: float | None = None
    input_ms: float | None = None
    infer_ms: float | None = None
    output_ms: float | None = None


# --- (a) backend instances in this process ---------------------------------------------------


def backend_round(
    plan: Path, gpus: Sequence[int], per_gpu: int, seconds: float, x: np.ndarray
) -> Row:
    """16 threads share the layout's instances through a queue of idle ones."""
    from trtserve.server.backends.base import ExecutionTimings, Placement
    from trtserve.server.backends.tensorrt_backend import TensorRTBackend
    from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings

    settings = ModelSettings(
        name="bench",
        platform="tensorrt_plan",
        instance_groups=(InstanceGroup(per_gpu, DeviceKind.GPU, tuple(gpus)),),
    )
    backend = TensorRTBackend(probe_plans=False)
    model = backend.load(plan, settings)
    placements = [
        Placement(DeviceKind.GPU, gpu, i * per_gpu + k)
        for i, gpu in enumerate(gpus)
        for k in range(per_gpu)
    ]
    instances = [model.create_instance(p) for p in placements]
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for instance in instances:
        for _ in range(3):  # warm each one
            instance.execute({"x": x}, ["output0"])
        idle.put(instance)
    latencies: list[list[float]] = [[] for _ in range(CONCURRENCY)]
    timings: list[list[tuple[int, ExecutionTimings]]] = [[] for _ in range(CONCURRENCY)]
    start = threading.Barrier(CONCURRENCY + 1)
    stop_at = [float("inf")]

    def work(i: int) -> None:
        start.wait()
        mine = latencies[i]
        while (began := time.perf_counter()) < stop_at[0]:
            instance = idle.get()
            try:
                started = time.perf_counter_ns()
                result = instance.execute({"x": x}, ["output0"])
                timings[i].append((time.perf_counter_ns() - started, result.timings))
            finally:
                idle.put(instance)
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CONCURRENCY)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    for instance in instances:
        instance.close()
    model.close()
    flat = np.asarray([v for per in latencies for v in per]) * 1e3
    executions = [t for per in timings for t in per]

    def mean_ms(values: Sequence[int]) -> float:
        return round(sum(values) / len(values) / 1e6, 3)

    return Row(
        "backend",
        "",
        0,
        len(flat),
        round(elapsed, 3),
        round(len(flat) / elapsed, 1),
        round(float(np.percentile(flat, 50)), 3),
        round(float(np.percentile(flat, 99)), 3),
        execute_ms=mean_ms([wall for wall, _ in executions]),
        input_ms=mean_ms([t.compute_input_ns for _, t in executions]),
        infer_ms=mean_ms([t.compute_infer_ns for _, t in executions]),
        output_ms=mean_ms([t.compute_output_ns for _, t in executions]),
    )


# --- (b) and (c): servers driven by load.py ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One load.py process: where it sends, what, and how many calls it keeps in flight."""

    server: ServerUnderTest
    model: str
    concurrency: int = CONCURRENCY


def write_repository(
    root: Path, plan: Path, models: dict[str, tuple[tuple[int, ...], int]]
) -> None:
    for name, (gpus, per_gpu) in models.items():
        folder = root / name
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(plan, folder / "1" / "model.plan")
        config = {
            "name": name,
            "platform": "tensorrt_plan",
            "max_batch_size": 0,
            "instance_group": [{"count": per_gpu, "kind": "KIND_GPU", "gpus": list(gpus)}],
        }
        (folder / "config.json").write_text(json.dumps(config))


def drive(targets: Sequence[Target], seconds: float) -> list[dict[str, Any]]:
    """One load.py window per target, all at once, each in its own process."""
    processes = []
    for t in targets:
        command = [sys.executable, str(Path(__file__).with_name("load.py"))]
        command += ["--target", t.server.address, "--model", t.model, "--input", INPUT]
        command += ["--concurrency", str(t.concurrency), "--channels", "4"]
        command += ["--duration", str(seconds), "--warmup", "1"]
        command += ["--server-pid", str(t.server.pid)]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            raise RuntimeError(f"load.py failed ({process.returncode}): {err.decode()[-2000:]}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def load_row(part: str, layout: str, round_: int, results: Sequence[dict[str, Any]]) -> Row:
    """One row for load.py windows run at once: throughputs add up, CPU per request pools."""
    count = sum(int(r["count"]) for r in results)
    elapsed = max(float(r["elapsed_s"]) for r in results)
    cpu = [r["server_cpu_s"] for r in results if r.get("server_cpu_s") is not None]
    loop = [r["server_loop_cpu_s"] for r in results if r.get("server_loop_cpu_s") is not None]
    return Row(
        part,
        layout,
        round_,
        count,
        round(elapsed, 3),
        round(sum(float(r["throughput"]) for r in results), 1),
        round(max(float(r["p50_ms"] or 0.0) for r in results), 3),
        round(max(float(r["p99_ms"] or 0.0) for r in results), 3),
        round(sum(cpu) / count * 1e3, 3) if cpu and count else None,
        round(sum(loop) / count * 1e3, 3) if loop and count else None,
        # Each process has its own loop: the busiest one is the limit.
        round(max(v / float(r["elapsed_s"]) for v, r in zip(loop, results, strict=False)), 2)
        if loop
        else None,
    )


def executions_by_device(metrics_port: int) -> dict[str, dict[str, float]]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    pattern = re.compile(
        r'^trtserve_instance_executions_total\{(?=[^}]*model="([^"]+)")'
        r'(?=[^}]*device="([^"]+)")[^}]*\} (\S+)$',
        re.M,
    )
    for model, device, value in pattern.findall(text):
        per_model = found.setdefault(model, {})
        per_model[device] = per_model.get(device, 0.0) + float(value)
    return found


@dataclass
class Servers:
    """Everything part (b) and (c) start, stopped together."""

    main: ServerUnderTest
    second: ServerUnderTest
    malloc_defaults: ServerUnderTest
    floor: ServerUnderTest

    def layouts(self) -> dict[str, list[Target]]:
        """Layout name -> the load.py processes that measure it."""
        half = CONCURRENCY // 2
        return {
            "1 GPU, 4 instances": [Target(self.main, "conv_1gpu")],
            "2 GPUs, 2 + 2 instances": [Target(self.main, "conv_2gpu")],
            "2 GPUs, 2 processes": [
                Target(self.main, "conv_gpu0", half),
                Target(self.second, "conv_gpu1", half),
            ],
            "1 GPU, 4 instances, glibc malloc defaults": [
                Target(self.malloc_defaults, "conv_1gpu")
            ],
        }

    def stop(self) -> int:
        for server in (self.second, self.malloc_defaults, self.floor):
            server.stop()
        return self.main.stop()


def start_servers(root: Path, plan: Path, runtimes_dir: Path) -> Servers:
    write_repository(root / "main", plan, MODELS)
    write_repository(root / "second", plan, SECOND_PROCESS_MODELS)
    write_repository(root / "defaults", plan, {"conv_1gpu": MODELS["conv_1gpu"]})
    started: list[ServerUnderTest] = []
    try:
        args = ["--log-level", "WARNING", "--runtimes-dir", str(runtimes_dir)]
        main = start(root / "main", args, timeout=300, metrics=True)
        started.append(main)
        second = start(root / "second", args, timeout=300)
        started.append(second)
        defaults = start(root / "defaults", [*args, "--malloc-keep-mb", "0"], timeout=300)
        started.append(defaults)
        floor_script = str(Path(__file__).with_name("floor_server.py"))
        floor = launch([floor_script, "--model", "conv", "--output", OUTPUT], "floor")
    except BaseException:
        for server in started:
            server.stop()
        raise
    return Servers(main, second, defaults, floor)


def measure_servers(
    plan: Path, runtimes_dir: Path, seconds: float, rounds: int
) -> tuple[list[Row], dict[str, Any]]:
    from trtserve.client import InferenceClient

    rows: list[Row] = []
    info: dict[str, Any] = {"breakdown": {}}
    root = Path(tempfile.mkdtemp(prefix="trtserve-multi-gpu-"))
    servers = start_servers(root, plan, runtimes_dir)
    try:
        with InferenceClient(servers.main.address, timeout=300) as client:
            for round_ in range(rounds):
                for layout, targets in servers.layouts().items():
                    model = targets[0].model
                    ours = targets[0].server is servers.main
                    before = client.model_statistics(model) if ours else []
                    results = drive(targets, seconds)
                    rows.append(load_row("server", layout, round_, results))
                    if before:
                        after = client.model_statistics(model)
                        info["breakdown"][f"{layout}, round {round_}"] = server_breakdown(
                            before[0], after[0]
                        )
                results = drive([Target(servers.floor, "conv")], seconds)
                rows.append(load_row("protocol floor", "no GPU", round_, results))
        info["executions_by_device"] = executions_by_device(servers.main.metrics_port)
    finally:
        info["server_exit"] = servers.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows, info


# --- report -----------------------------------------------------------------------------------


def summary(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Mean per-second of each (part, layout), and each layout over the part's first one."""
    out: dict[str, dict[str, float]] = {}
    for part in dict.fromkeys(r.part for r in rows):
        means: dict[str, float] = {}
        for layout in dict.fromkeys(r.layout for r in rows if r.part == part):
            values = [r.per_s for r in rows if r.part == part and r.layout == layout]
            means[layout] = round(sum(values) / len(values), 1)
        base_layout, base = next(iter(means.items()))
        ratios = {f"{k} / {base_layout}": round(v / base, 2) for k, v in means.items() if base}
        out[part] = {**means, **{k: v for k, v in ratios.items() if not k.startswith(base_layout)}}
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Multi-GPU benchmark, {report['plan']}, concurrency {CONCURRENCY} "
        f"({report['gpu']} x{report['devices']}, {report['date']})",
        "",
        "| part | layout | round | req/s | p50 ms | p99 ms | server CPU ms/req | loop ms/req "
        "| loop busy | execute ms (input, infer, output) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in (Row(**row) for row in report["rows"]):
        parts = (
            f"{r.execute_ms:g} ({r.input_ms:g}, {r.infer_ms:g}, {r.output_ms:g})"
            if r.execute_ms is not None
            else ""
        )
        lines.append(
            f"| {r.part} | {r.layout} | {r.round} | {r.per_s:,.1f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {_opt(r.server_cpu_ms)} | {_opt(r.server_loop_ms)} | "
            f"{_opt(r.loop_busy)} | {parts} |"
        )
    lines += ["", "| part | means and ratios |", "| --- | --- |"]
    for part, means in report["summary"].items():
        lines.append(f"| {part} | {'; '.join(f'{k}: {v:g}' for k, v in means.items())} |")
    server = report.get("server", {})
    lines.append("")
    for model, devices in server.get("executions_by_device", {}).items():
        lines.append(f"- executions of `{model}` by device: {devices}")
    for name, b in server.get("breakdown", {}).items():
        if b:
            lines.append(breakdown_line(f"({name})", b))
    for key in ("backend_error", "server_error"):
        if key in report:
            lines.append(f"- {key}: {report[key]}")
    return "\n".join(lines) + "\n"


def _opt(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes-dir", type=Path, required=True, help="lean runtimes folder")
    parser.add_argument("--plans", type=Path, required=True, help="folder holding " + PLAN_NAME)
    parser.add_argument("--out", type=Path, required=True, help="JSON results (.md beside it)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per window (5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per layout (2)")
    parser.add_argument(
        "--part", choices=("all", "backend", "server"), default="all", help="what to run (all)"
    )
    parser.add_argument(
        "--backend-layout",
        action="append",
        choices=list(BACKEND_LAYOUTS),
        help="only these backend layouts (repeat; default all), e.g. under a profiler",
    )
    args = parser.parse_args(argv)
    from trtserve.server.runtime.cuda_device import cuda_device_count

    devices = cuda_device_count()
    layouts = {k: v for k, v in BACKEND_LAYOUTS.items() if k in (args.backend_layout or [k])}
    # The server part and the default layouts need two GPUs; one backend layout may need one.
    needed = 2 if args.part != "backend" else 1 + max(max(g) for g, _ in layouts.values())
    if devices < needed:
        parser.error(f"this run needs {needed} CUDA device(s); {devices} visible")
    os.environ["TRTSERVE_RUNTIMES_DIR"] = str(args.runtimes_dir.resolve())
    # The backend part runs here: with the allocator settings `trtserve serve` makes.
    reuse_freed_memory()
    plan = (args.plans / PLAN_NAME).resolve()
    report: dict[str, Any] = {
        "plan": PLAN_NAME,
        "gpu": gpu_name(),
        "devices": devices,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": args.seconds,
    }
    rows: list[Row] = []
    x = make_input()
    try:
        for round_ in range(args.rounds if args.part != "server" else 0):
            for layout, (gpus, per_gpu) in layouts.items():
                row = backend_round(plan, gpus, per_gpu, args.seconds, x)
                row.layout, row.round = layout, round_
                rows.append(row)
                print(f"backend {layout} round {round_}: {row.per_s:,.0f}/s", flush=True)
    except Exception as e:  # still run the server part and write what was measured
        report["backend_error"] = f"{type(e).__name__}: {e}"
    try:
        if args.part != "backend":
            server_rows, report["server"] = measure_servers(
                plan, args.runtimes_dir.resolve(), args.seconds, args.rounds
            )
            rows += server_rows
    except Exception as e:  # keep the backend rows; say why the server part is missing
        report["server_error"] = f"{type(e).__name__}: {e}"
    report["rows"] = [asdict(r) for r in rows]
    report["summary"] = summary(rows)
    write_report(args.out, report, markdown(report))
    return 1 if "backend_error" in report or "server_error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
