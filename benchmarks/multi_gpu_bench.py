"""Instances of the 11.0.0.114 plan on one GPU against two GPUs of one host, at concurrency 16.

    python benchmarks/multi_gpu_bench.py --runtimes-dir /tmp/lean --plans .gpu/plans \\
        --out results/multi_gpu.json

Both layouts have 4 instances in all: 4 on GPU 0, or 2 on GPU 0 and 2 on GPU 1. Rounds
alternate between the layouts so that drift on the machine hits both alike.

(a) backend: TensorRT instances in this process, 16 threads taking an idle instance each
    (what the server's scheduler does), no gRPC;
(b) server: one `trtserve serve` process with a model per layout, driven by load.py (grpc.aio,
    a prebuilt request) from its own process at concurrency 16, with the server's CPU time;
(c) the protocol floor: floor_server.py answering the same 3.2 MB response without doing
    anything, at the same concurrency: what any Python gRPC server can do with messages this
    size, so the most (b) could reach whatever the GPUs do.

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

from gpu_bench import gpu_name, make_input, server_breakdown
from server_under_test import ServerUnderTest, launch

PLAN_NAME = "conv_relu_trt11.0.0.114.plan"
INPUT = "x:FP32:1,3,224,224"
OUTPUT = "output0:FP32:1,16,222,222"
CONCURRENCY = 16
INSTANCES = 4
# Layout name -> the GPUs its instances go to (INSTANCES spread evenly over them).
LAYOUTS = {"1 GPU": (0,), "2 GPUs": (0, 1)}
_METRICS = re.compile(r"metrics on [^ ]+:(\d+)")


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


# --- (a) backend instances in this process ---------------------------------------------------


def backend_round(plan: Path, gpus: Sequence[int], seconds: float, x: np.ndarray) -> Row:
    """16 threads share the layout's instances through a queue of idle ones."""
    from trtserve.server.backends.base import Placement
    from trtserve.server.backends.tensorrt_backend import TensorRTBackend
    from trtserve.server.specs import DeviceKind, InstanceGroup, ModelSettings

    per_gpu = INSTANCES // len(gpus)
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
    start = threading.Barrier(CONCURRENCY + 1)
    stop_at = [float("inf")]

    def work(i: int) -> None:
        start.wait()
        mine = latencies[i]
        while (began := time.perf_counter()) < stop_at[0]:
            instance = idle.get()
            try:
                instance.execute({"x": x}, ["output0"])
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
    return Row(
        "backend",
        "",
        0,
        len(flat),
        round(elapsed, 3),
        round(len(flat) / elapsed, 1),
        round(float(np.percentile(flat, 50)), 3),
        round(float(np.percentile(flat, 99)), 3),
    )


# --- (b) and (c): servers driven by load.py ---------------------------------------------------


def model_name(layout: str) -> str:
    return "conv_" + layout.split()[0] + "gpu"


def write_repository(root: Path, plan: Path) -> None:
    for layout, gpus in LAYOUTS.items():
        folder = root / model_name(layout)
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(plan, folder / "1" / "model.plan")
        config = {
            "name": model_name(layout),
            "platform": "tensorrt_plan",
            "max_batch_size": 0,
            "instance_group": [
                {"count": INSTANCES // len(gpus), "kind": "KIND_GPU", "gpus": list(gpus)}
            ],
        }
        (folder / "config.json").write_text(json.dumps(config))


def drive(target: str, model: str, seconds: float, server_pid: int) -> dict[str, Any]:
    """One load.py window at CONCURRENCY, in its own process."""
    command = [sys.executable, str(Path(__file__).with_name("load.py")), "--target", target]
    command += ["--model", model, "--input", INPUT, "--concurrency", str(CONCURRENCY)]
    command += ["--channels", "4", "--duration", str(seconds), "--warmup", "1"]
    command += ["--server-pid", str(server_pid)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load.py failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def load_row(part: str, layout: str, round_: int, result: dict[str, Any]) -> Row:
    count = int(result["count"])
    elapsed = float(result["elapsed_s"])
    cpu, loop = result.get("server_cpu_s"), result.get("server_loop_cpu_s")
    return Row(
        part,
        layout,
        round_,
        count,
        round(elapsed, 3),
        round(float(result["throughput"]), 1),
        round(float(result["p50_ms"] or 0.0), 3),
        round(float(result["p99_ms"] or 0.0), 3),
        round(cpu / count * 1e3, 3) if cpu is not None and count else None,
        round(loop / count * 1e3, 3) if loop is not None and count else None,
        round(loop / elapsed, 2) if loop is not None and elapsed else None,
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


def start_trtserve(repository: Path, runtimes_dir: Path) -> tuple[ServerUnderTest, int]:
    server = launch(
        [
            "-m",
            "trtserve.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--log-level",
            "WARNING",
            "--repository",
            str(repository),
            "--runtimes-dir",
            str(runtimes_dir),
        ],
        "trtserve",
        timeout=300,
    )
    port = next(int(m.group(1)) for line in server.output if (m := _METRICS.search(line)))
    return server, port


def measure_servers(
    plan: Path, runtimes_dir: Path, seconds: float, rounds: int
) -> tuple[list[Row], dict[str, Any]]:
    from trtserve.client import InferenceClient

    rows: list[Row] = []
    info: dict[str, Any] = {"breakdown": {}}
    repository = Path(tempfile.mkdtemp(prefix="trtserve-multi-gpu-"))
    write_repository(repository, plan)
    server, metrics_port = start_trtserve(repository, runtimes_dir)
    floor = launch(
        [str(Path(__file__).with_name("floor_server.py")), "--model", "conv", "--output", OUTPUT],
        "floor",
    )
    try:
        with InferenceClient(server.address, timeout=300) as client:
            for round_ in range(rounds):
                for layout in LAYOUTS:
                    model = model_name(layout)
                    before = client.model_statistics(model)
                    result = drive(server.address, model, seconds, server.pid)
                    after = client.model_statistics(model)
                    rows.append(load_row("server", layout, round_, result))
                    if before and after:
                        info["breakdown"][f"{layout}, round {round_}"] = server_breakdown(
                            before[0], after[0]
                        )
                result = drive(floor.address, "conv", seconds, floor.pid)
                rows.append(load_row("protocol floor", "no GPU", round_, result))
        info["executions_by_device"] = executions_by_device(metrics_port)
    finally:
        info["server_exit"] = server.stop()
        floor.stop()
        shutil.rmtree(repository, ignore_errors=True)
    return rows, info


# --- report -----------------------------------------------------------------------------------


def summary(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Mean per-second of each (part, layout), and 2 GPUs over 1 GPU per part."""
    out: dict[str, dict[str, float]] = {}
    for part in dict.fromkeys(r.part for r in rows):
        means = {}
        for layout in dict.fromkeys(r.layout for r in rows if r.part == part):
            values = [r.per_s for r in rows if r.part == part and r.layout == layout]
            means[layout] = round(sum(values) / len(values), 1)
        if "1 GPU" in means and "2 GPUs" in means and means["1 GPU"]:
            means["2 GPUs / 1 GPU"] = round(means["2 GPUs"] / means["1 GPU"], 2)
        out[part] = means
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Multi-GPU benchmark, {report['plan']}, concurrency {CONCURRENCY}, {INSTANCES} "
        f"instances ({report['gpu']} x{report['devices']}, {report['date']})",
        "",
        "| part | layout | round | req/s | p50 ms | p99 ms | server CPU ms/req | loop ms/req "
        "| loop busy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in (Row(**row) for row in report["rows"]):
        lines.append(
            f"| {r.part} | {r.layout} | {r.round} | {r.per_s:,.1f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {_opt(r.server_cpu_ms)} | {_opt(r.server_loop_ms)} | "
            f"{_opt(r.loop_busy)} |"
        )
    lines += ["", "| part | means and ratio |", "| --- | --- |"]
    for part, means in report["summary"].items():
        lines.append(f"| {part} | {', '.join(f'{k}: {v:g}' for k, v in means.items())} |")
    server = report.get("server", {})
    lines.append("")
    for model, devices in server.get("executions_by_device", {}).items():
        lines.append(f"- executions of `{model}` by device: {devices}")
    for name, b in server.get("breakdown", {}).items():
        if b:
            lines.append(
                f"- server side per request ({name}): total {b['success_ms']} ms, queue "
                f"{b['queue_ms']} ms, input {b['compute_input_ms']} ms, infer "
                f"{b['compute_infer_ms']} ms, output {b['compute_output_ms']} ms"
            )
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
    args = parser.parse_args(argv)
    from trtserve.server.runtime.cuda_device import cuda_device_count

    devices = cuda_device_count()
    if devices < 2:
        parser.error(f"this benchmark needs 2 CUDA devices; {devices} visible")
    os.environ["TRTSERVE_RUNTIMES_DIR"] = str(args.runtimes_dir.resolve())
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
        for round_ in range(args.rounds):
            for layout, gpus in LAYOUTS.items():
                row = backend_round(plan, gpus, args.seconds, x)
                row.layout, row.round = layout, round_
                rows.append(row)
                print(f"backend {layout} round {round_}: {row.per_s:,.0f}/s", flush=True)
    except Exception as e:  # still run the server part and write what was measured
        report["backend_error"] = f"{type(e).__name__}: {e}"
    try:
        server_rows, report["server"] = measure_servers(
            plan, args.runtimes_dir.resolve(), args.seconds, args.rounds
        )
        rows += server_rows
    except Exception as e:  # keep the backend rows; say why the server part is missing
        report["server_error"] = f"{type(e).__name__}: {e}"
    report["rows"] = [asdict(r) for r in rows]
    report["summary"] = summary(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 1 if "backend_error" in report or "server_error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
