"""The real 11.0.0.114 plan on the GPU: trtserve end to end against TensorRT run directly.

    python benchmarks/gpu_bench.py --runtimes-dir /tmp/lean --plans .gpu/plans \\
        --out results/gpu_bench.json

Measures, for conv_relu_trt11.0.0.114.plan (1x3x224x224 FP32 in, 0.6 MB; 1x16x222x222 FP32
out, 3.2 MB):

(a) direct: TensorRT in this process, pinned host buffers, per iteration H2D copy,
    execute_async_v3, D2H copy and a stream sync; also execute alone, and two contexts on two
    streams from two threads (what two server instances could do at best);
(b) the copy ceiling: only the H2D and D2H copies of the same sizes on pinned memory, the least
    any server pays per request;
(c) the server end to end: `trtserve serve` in its own process with every lean runtime of
    --runtimes-dir preloaded, the plan uploaded with 2 instances, driven by tritonclient in a
    spawned interpreter at concurrency 1 and 8 (threads, one client each);
(d) lean runtime load time per version, measured here with `load_runtime`, and the server's
    own load-time histogram.

Writes the JSON to --out and a markdown table beside it (same name, .md), and prints the table.
tritonclient cannot be imported next to trtserve.protocol (the same protobuf names), so the load
runs in a child: `gpu_bench.py --triton-load ADDRESS ...`, which imports only tritonclient.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script: the sibling modules are importable from the script's folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, start

PLAN_NAME = "conv_relu_trt11.0.0.114.plan"
PLAN_VERSION = "11.0.0.114"
INPUT_NAME, OUTPUT_NAME = "x", "output0"
INPUT_SHAPE = (1, 3, 224, 224)
OUTPUT_SHAPE = (1, 16, 222, 222)
MODEL = "conv"
INSTANCES = 2


def make_input() -> np.ndarray:
    np.random.seed(0)
    return np.random.rand(*INPUT_SHAPE).astype(np.float32) - 0.5


@dataclass
class Measure:
    """One measured mode: requests (or iterations) done, wall time and latency percentiles."""

    name: str
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float


def summarize(name: str, latencies_s: Sequence[float], elapsed_s: float) -> Measure:
    if not latencies_s:
        return Measure(name, 0, round(elapsed_s, 3), 0.0, 0.0, 0.0, 0.0)
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return Measure(
        name=name,
        requests=len(latencies_s),
        seconds=round(elapsed_s, 3),
        per_s=round(len(latencies_s) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        p50_ms=round(float(np.percentile(ms, 50)), 4),
        p99_ms=round(float(np.percentile(ms, 99)), 4),
        mean_ms=round(float(ms.mean()), 4),
    )


# --- the child: tritonclient load ----------------------------------------------------------


def triton_load(address: str, model: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` threads, one tritonclient each, infer back to back for `seconds`.

    The process keeps freed memory for reuse, as `trtserve bench` does: with glibc's defaults
    a Python client parsing 3.2 MB responses runs at one of two speeds from start to start
    (trtserve.protocol.allocator), which would blur the server's figure.
    """
    import tritonclient.grpc as grpcclient

    # Only ctypes: no trtserve protobuf module is loaded next to tritonclient's.
    from trtserve.protocol.allocator import reuse_freed_memory

    reuse_freed_memory()

    x = make_input()
    warmup = 20
    barrier = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    digests: set[str] = set()
    # Set once every thread is warm; until then nobody passes the barrier.
    stop_at = [float("inf")]

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(address)
        tensor = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            for _ in range(warmup):
                result = client.infer(model, [tensor])
            out = result.as_numpy(OUTPUT_NAME)
            digests.add(hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest())
        except Exception as e:  # reported in the result; the barrier must still be reached
            errors.append(f"warm-up: {e}")
        barrier.wait()
        mine = latencies[i]
        try:
            while True:
                started = time.perf_counter()
                if started >= stop_at[0]:
                    break
                client.infer(model, [tensor])
                mine.append(time.perf_counter() - started)
        except Exception as e:
            errors.append(str(e))
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [v for per in latencies for v in per]
    measure = summarize(f"server, tritonclient concurrency {concurrency}", flat, elapsed)
    return {"measure": asdict(measure), "errors": errors[:5], "output_sha256": sorted(digests)}


# --- (a), (b), (d): TensorRT and CUDA directly ---------------------------------------------


class Pinned:
    """A pinned host buffer and a device buffer of `nbytes`, freed by `free`."""

    def __init__(self, rt: Any, call: Callable[..., Any], nbytes: int) -> None:
        self._rt, self._call, self.nbytes = rt, call, nbytes
        self.host = int(call("cudaHostAlloc", rt.cudaHostAlloc, nbytes, rt.cudaHostAllocDefault))
        self.device = int(call("cudaMalloc", rt.cudaMalloc, nbytes))

    def view(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.host)
        array: np.ndarray = np.ctypeslib.as_array(raw).view(dtype).reshape(shape)
        return array

    def free(self) -> None:
        self._call("cudaFreeHost", self._rt.cudaFreeHost, self.host)
        self._call("cudaFree", self._rt.cudaFree, self.device)


class Pipeline:
    """One execution context on its own stream with pinned staging buffers."""

    def __init__(self, rt: Any, call: Callable[..., Any], engine: Any, x: np.ndarray) -> None:
        self._rt, self._call = rt, call
        self.stream = call(
            "cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags, rt.cudaStreamNonBlocking
        )
        self.inp = Pinned(rt, call, x.nbytes)
        self.out = Pinned(rt, call, int(np.prod(OUTPUT_SHAPE)) * 4)
        self.inp.view(np.float32, INPUT_SHAPE)[...] = x
        self.context: Any = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context")
        for name, address in ((INPUT_NAME, self.inp.device), (OUTPUT_NAME, self.out.device)):
            if not self.context.set_tensor_address(name, address):
                raise RuntimeError(f"TensorRT refused the address of {name}")

    def step(self, copies: bool = True, execute: bool = True) -> None:
        rt, call, stream = self._rt, self._call, self.stream
        if copies:
            call(
                "cudaMemcpyAsync H2D",
                rt.cudaMemcpyAsync,
                self.inp.device,
                self.inp.host,
                self.inp.nbytes,
                rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                stream,
            )
        if execute and not self.context.execute_async_v3(int(stream)):
            raise RuntimeError("execute_async_v3 failed")
        if copies:
            call(
                "cudaMemcpyAsync D2H",
                rt.cudaMemcpyAsync,
                self.out.host,
                self.out.device,
                self.out.nbytes,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream,
            )
        call("cudaStreamSynchronize", rt.cudaStreamSynchronize, stream)

    def warm(self, copies: bool = True, execute: bool = True) -> None:
        for _ in range(50):
            self.step(copies, execute)

    def timed(
        self, iterations: int, copies: bool = True, execute: bool = True
    ) -> tuple[list[float], float]:
        """Per-iteration latencies and the loop's wall time, in seconds."""
        latencies = []
        began = time.perf_counter()
        for _ in range(iterations):
            started = time.perf_counter()
            self.step(copies, execute)
            latencies.append(time.perf_counter() - started)
        return latencies, time.perf_counter() - began

    def close(self) -> None:
        self._call("cudaStreamSynchronize", self._rt.cudaStreamSynchronize, self.stream)
        self.context = None
        self.inp.free()
        self.out.free()
        self._call("cudaStreamDestroy", self._rt.cudaStreamDestroy, self.stream)


def measure_direct(
    plan: Path, libraries: dict[str, Path], iterations: int
) -> tuple[list[Measure], dict[str, Any]]:
    """(a), (b) and (d) in this process; also the direct output's digest and checks."""
    import tensorrt_dispatch as trt
    from cuda.bindings import runtime as rt

    from trtserve.server.runtime.cuda_device import cuda_call

    logger = trt.Logger(trt.Logger.WARNING)
    dispatch = trt.Runtime(logger)
    lean: dict[str, Any] = {}
    load_ms: dict[str, float] = {}
    for version, library in libraries.items():
        started = time.perf_counter()
        runtime = dispatch.load_runtime(str(library))
        load_ms[version] = round((time.perf_counter() - started) * 1e3, 2)
        if runtime is None:
            raise RuntimeError(f"load_runtime({library}) failed")
        lean[version] = runtime
    data = plan.read_bytes()
    started = time.perf_counter()
    engine = lean[PLAN_VERSION].deserialize_cuda_engine(data)
    deserialize_ms = round((time.perf_counter() - started) * 1e3, 2)
    if engine is None:
        raise RuntimeError(f"lean runtime {PLAN_VERSION} did not deserialize {plan}")

    x = make_input()
    pipelines: list[Pipeline] = []
    measures: list[Measure] = []
    try:
        pipelines += [Pipeline(rt, cuda_call, engine, x) for _ in range(2)]
        first = pipelines[0]
        first.step()
        out = first.out.view(np.float32, OUTPUT_SHAPE).copy()
        info = {
            "lean_load_ms": load_ms,
            "deserialize_ms": deserialize_ms,
            "output_max": round(float(out.max()), 4),
            "output_min": round(float(out.min()), 4),
            "output_sha256": hashlib.sha256(out.tobytes()).hexdigest(),
            "input_bytes": x.nbytes,
            "output_bytes": out.nbytes,
        }
        modes = (
            ("direct: H2D + execute + D2H", True, True),
            ("direct: execute only", False, True),
            ("copy ceiling: pinned H2D + D2H", True, False),
        )
        for name, copies, execute in modes:
            first.warm(copies, execute)
            measures.append(summarize(name, *first.timed(iterations, copies, execute)))
        measures.append(two_streams(pipelines, iterations))
    finally:
        for pipeline in pipelines:
            pipeline.close()
        # Engines before the runtimes that made them.
        del engine, lean, dispatch
    return measures, info


def two_streams(pipelines: Sequence[Pipeline], iterations: int) -> Measure:
    """Two contexts, two streams, two threads: the most two server instances could do."""
    results: list[list[float]] = [[] for _ in pipelines]
    barrier = threading.Barrier(len(pipelines) + 1)

    def work(index: int, pipeline: Pipeline) -> None:
        try:
            pipeline.warm()
        except BaseException:
            barrier.abort()  # the main thread must not wait forever
            raise
        barrier.wait()
        results[index] = pipeline.timed(iterations)[0]

    threads = [threading.Thread(target=work, args=(i, p)) for i, p in enumerate(pipelines)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    name = f"direct: {len(pipelines)} contexts, {len(pipelines)} streams, {len(pipelines)} threads"
    return summarize(name, [v for r in results for v in r], elapsed)


# --- (c): the server ------------------------------------------------------------------------


def start_server(
    repository: Path, runtimes_dir: Path, versions: Sequence[str], extra: Sequence[str] = ()
) -> ServerUnderTest:
    """`trtserve serve` with every version in `versions` preloaded, its metrics port open;
    `extra`: more flags (`--workers 4`)."""
    repository.mkdir(parents=True, exist_ok=True)  # the plan is uploaded into it
    args = ["--log-level", "WARNING", "--runtimes-dir", str(runtimes_dir), *extra]
    for version in versions:
        args += ["--preload-runtimes", version]
    return start(repository, args, timeout=180, metrics=True)


def model_config(instances: int) -> str:
    return json.dumps(
        {
            "name": MODEL,
            "platform": "tensorrt_plan",
            "max_batch_size": 0,
            "instance_group": [{"count": instances, "kind": "KIND_GPU", "gpus": [0]}],
        }
    )


def run_load(address: str, concurrency: int, seconds: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--triton-load", address]
    command += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"tritonclient load failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def server_breakdown(before: Any, after: Any) -> dict[str, float]:
    """Mean server-side milliseconds per request between two ModelStatistics."""
    count = int(after.success.count) - int(before.success.count)
    if count <= 0:
        return {}

    def per_request(field: str) -> float:
        ns = int(getattr(after, field).ns) - int(getattr(before, field).ns)
        return round(ns / count / 1e6, 4)

    return {
        "requests": count,
        "success_ms": per_request("success"),
        "queue_ms": per_request("queue"),
        "compute_input_ms": per_request("compute_input"),
        "compute_infer_ms": per_request("compute_infer"),
        "compute_output_ms": per_request("compute_output"),
    }


def write_report(out: Path, report: dict[str, Any], table: str) -> None:
    """The JSON to `out`, the markdown table beside it (.md), and the table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


def breakdown_line(label: str, b: dict[str, float]) -> str:
    """One markdown bullet of a `server_breakdown`."""
    return (
        f"- server side per request {label}: total {b['success_ms']} ms, queue "
        f"{b['queue_ms']} ms, input {b['compute_input_ms']} ms, infer "
        f"{b['compute_infer_ms']} ms, output {b['compute_output_ms']} ms"
    )


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text: str = response.read().decode()
    return text


def lean_metrics(text: str) -> dict[str, Any]:
    loaded = re.findall(r'^trtserve_lean_runtimes_loaded\{version="([^"]+)"\} (\S+)$', text, re.M)
    total = re.search(r"^trtserve_lean_runtime_load_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^trtserve_lean_runtime_load_seconds_count (\S+)$", text, re.M)
    n = float(count.group(1)) if count else 0.0
    return {
        "loaded_versions": sorted(v for v, value in loaded if float(value) == 1.0),
        "load_count": int(n),
        "load_mean_ms": round(float(total.group(1)) / n * 1e3, 2) if total and n else None,
    }


def measure_server(
    plan: Path, runtimes_dir: Path, versions: Sequence[str], seconds: float
) -> tuple[list[Measure], dict[str, Any]]:
    from trtserve.client import InferenceClient, InferInput

    repository = Path(tempfile.mkdtemp(prefix="trtserve-gpu-bench-"))
    server = start_server(repository, runtimes_dir, versions)
    measures: list[Measure] = []
    info: dict[str, Any] = {"breakdown": {}, "load_errors": {}, "output_sha256": []}
    try:
        with InferenceClient(server.address, timeout=300) as client:
            started = time.perf_counter()
            client.upload_model(MODEL, plan, config_json=model_config(INSTANCES))
            info["upload_and_load_ms"] = round((time.perf_counter() - started) * 1e3, 1)
            # One request through our own client first: a model has no statistics entry
            # before its first request.
            x = make_input()
            out = client.infer(MODEL, [InferInput(INPUT_NAME, x)]).as_numpy(OUTPUT_NAME)
            info["output_sha256"].append(hashlib.sha256(out.tobytes()).hexdigest())
            for concurrency in (1, 8):
                before = client.model_statistics(MODEL)[0]
                result = run_load(server.address, concurrency, seconds)
                after = client.model_statistics(MODEL)[0]
                measures.append(Measure(**result["measure"]))
                info["breakdown"][concurrency] = server_breakdown(before, after)
                info["load_errors"][concurrency] = result["errors"]
                info["output_sha256"] += result["output_sha256"]
        info["lean"] = lean_metrics(scrape(server.metrics_port))
    finally:
        info["server_exit"] = server.stop()
        info["server_log_tail"] = "".join(server.output[-20:])
    return measures, info


# --- report ---------------------------------------------------------------------------------


def ratios(measures: Sequence[Measure]) -> dict[str, dict[str, float]]:
    """Each server row against (a) direct and (b) the copy ceiling."""
    by_name = {m.name: m for m in measures}
    direct = by_name.get("direct: H2D + execute + D2H")
    ceiling = by_name.get("copy ceiling: pinned H2D + D2H")
    out: dict[str, dict[str, float]] = {}
    for m in measures:
        if not m.name.startswith("server") or direct is None or ceiling is None:
            continue
        out[m.name] = {
            "p50_vs_direct": round(m.p50_ms / direct.p50_ms, 2),
            "p50_vs_copy_ceiling": round(m.p50_ms / ceiling.p50_ms, 2),
            "throughput_vs_direct": round(m.per_s / direct.per_s, 3),
            "throughput_vs_copy_ceiling": round(m.per_s / ceiling.per_s, 3),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    measures = [Measure(**m) for m in report["measures"]]
    rel = report["ratios"]
    lines = [
        f"GPU benchmark, {report['plan']} ({report['gpu']}, {report['date']})",
        "",
        "| mode | req/s | p50 ms | p99 ms | p50 / direct | p50 / copy ceiling | req/s / direct |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in measures:
        r = rel.get(m.name, {})
        lines.append(
            f"| {m.name} | {m.per_s:,.0f} | {m.p50_ms:.3f} | {m.p99_ms:.3f} | "
            f"{_x(r.get('p50_vs_direct'))} | {_x(r.get('p50_vs_copy_ceiling'))} | "
            f"{_x(r.get('throughput_vs_direct'))} |"
        )
    direct = report["direct"]
    server = report.get("server", {})
    lines += ["", "| lean runtime | load_runtime ms (direct) |", "| --- | ---: |"]
    for version, ms in direct.get("lean_load_ms", {}).items():
        lines.append(f"| {version} | {ms:.1f} |")
    lean = server.get("lean", {})
    lines += [
        "",
        f"- plan deserialize (direct): {direct.get('deserialize_ms')} ms; "
        f"server upload + load (2 instances): {server.get('upload_and_load_ms')} ms",
        f"- server process: lean runtimes loaded {lean.get('loaded_versions')}, "
        f"{lean.get('load_count')} loads, mean {lean.get('load_mean_ms')} ms",
        f"- outputs: direct max {direct.get('output_max')}; server output equals direct: "
        f"{report.get('server_output_equals_direct')}",
    ]
    for concurrency, b in server.get("breakdown", {}).items():
        if b:
            lines.append(breakdown_line(f"at concurrency {concurrency}", b))
    for key in ("direct_error", "server_error"):
        if key in report:
            lines.append(f"- {key}: {report[key]}")
    for concurrency, errors in server.get("load_errors", {}).items():
        if errors:
            lines.append(f"- tritonclient errors at concurrency {concurrency}: {errors}")
    return "\n".join(lines) + "\n"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:g}x"


def gpu_name() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown GPU"


def lean_libraries(runtimes_dir: Path) -> dict[str, Path]:
    from trtserve.server.runtime.lean_store import LeanStore

    return {str(r.version): r.library for r in LeanStore(runtimes_dir).list()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes-dir", type=Path, help="lean runtimes (<dir>/<version>/...)")
    parser.add_argument("--plans", type=Path, help="folder holding " + PLAN_NAME)
    parser.add_argument("--out", type=Path, help="JSON results file (a .md goes beside it)")
    parser.add_argument("--iterations", type=int, default=2000, help="direct iterations (2000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per server load run (8)")
    parser.add_argument("--triton-load", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.triton_load:
        result = triton_load(args.triton_load, MODEL, args.concurrency, args.seconds)
        print(json.dumps(result))
        return 0
    if args.runtimes_dir is None or args.plans is None or args.out is None:
        parser.error("--runtimes-dir, --plans and --out are required")
    from trtserve.server.runtime.cuda_device import cuda_device_count

    if cuda_device_count() == 0:
        # TensorRT runtimes made without a CUDA device crash the process when used.
        parser.error("no CUDA device is visible: this benchmark needs a GPU")
    runtimes_dir = args.runtimes_dir.resolve()
    plan = (args.plans / PLAN_NAME).resolve()
    libraries = lean_libraries(runtimes_dir)
    if PLAN_VERSION not in libraries:
        parser.error(f"lean runtime {PLAN_VERSION} is not in {runtimes_dir}")

    report: dict[str, Any] = {
        "plan": PLAN_NAME,
        "gpu": gpu_name(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "iterations": args.iterations,
        "server_seconds": args.seconds,
        "instances": INSTANCES,
    }
    measures: list[Measure] = []
    try:
        measures, report["direct"] = measure_direct(plan, libraries, args.iterations)
    except Exception as e:  # still run the server part and write what was measured
        report["direct"] = {}
        report["direct_error"] = f"{type(e).__name__}: {e}"
    print(f"direct done: {[m.name for m in measures]}", flush=True)
    try:
        server_measures, report["server"] = measure_server(
            plan, runtimes_dir, list(libraries), args.seconds
        )
        measures += server_measures
    except Exception as e:  # keep the direct results; say why the server part is missing
        report["server_error"] = f"{type(e).__name__}: {e}"
    digests = set(report.get("server", {}).get("output_sha256", []))
    direct_digest = report["direct"].get("output_sha256")
    report["server_output_equals_direct"] = (
        digests == {direct_digest} if digests and direct_digest else None
    )
    report["measures"] = [asdict(m) for m in measures]
    report["ratios"] = ratios(measures)
    write_report(args.out, report, markdown(report))
    failed = [f"{key}: {report[key]}" for key in ("direct_error", "server_error") if key in report]
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
