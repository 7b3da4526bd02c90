"""Shared memory against gRPC bytes: the same client, the same model, every data path side by side.

    python benchmarks/shm_bench.py --runtimes-dir /tmp/lean --plans .gpu/plans \\
        --out results/shm_bench.json                       # on the GPU machine
    python benchmarks/shm_bench.py --cpu --out /tmp/shm_bench.json   # anywhere, no GPU

The model takes 1x3x224x224 FP32 (0.6 MB) and returns 1x16x222x222 FP32 (3.2 MB): on a GPU the
real plan (conv_relu_trt11.0.0.114.plan, uploaded with gpu_bench.py's instance count); with
--cpu an ONNX model of the same tensor sizes that only moves data (Slice to 222x222, then Gather of
16 channels out of 3: a copy, so that the data path and not the arithmetic dominates; a
3->16 3x3 Conv would take milliseconds of one core per request), served by
`trtserve serve --repository` with the same instance count.

Paths, each at concurrency 1, 8 and 32, driven by one client (tritonclient, in --client-procs
spawned processes that import only tritonclient; concurrency split across them):

(1) bytes: tensors inline in the gRPC messages (raw_input_contents / raw_output_contents);
(2) system shared memory: input and output by reference to one POSIX shared-memory region per
    concurrent request slot (input at offset 0, output after it), created with
    tritonclient.utils.shared_memory, registered before the timed window, unregistered after;
(3) CUDA shared memory: the same with regions made by tritonclient.utils.cuda_shared_memory on
    device 0 (skipped, with a note, without a GPU);
(4) in-process: TensorRT directly in this process (gpu_bench.py's measurement: pinned H2D,
    execute_async_v3, D2H), GPU only;
(5) floor: floor_server.py answering ModelInfer with a prebuilt reply holding empty
    raw_output_contents (what a shared-memory reply looks like) to the very requests of (2)
    (a few hundred bytes each): what the same client and grpc.aio cost for such a message.

Before each timed window every slot's output is read back from its region and compared with the
inline path's output; errors during the window are counted. Writes the JSON to --out and a
markdown table beside it (.md), and prints the table. tritonclient cannot share an interpreter
with trtserve.protocol (the same protobuf names): the load runs in children started as
`shm_bench.py --child SPEC`, which import only tritonclient (and trtserve's ctypes allocator).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

# Run as a script: the sibling modules are importable from the script's folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, launch, start

HERE = Path(__file__).resolve().parent

MODEL = "conv"
INPUT_NAME, OUTPUT_NAME = "x", "output0"
INPUT_SHAPE = (1, 3, 224, 224)
OUTPUT_SHAPE = (1, 16, 222, 222)
INPUT_BYTES = int(np.prod(INPUT_SHAPE)) * 4
OUTPUT_BYTES = int(np.prod(OUTPUT_SHAPE)) * 4
# One region per request slot: the input at offset 0, the output right after it.
REGION_BYTES = INPUT_BYTES + OUTPUT_BYTES
# The CPU model's channel map: output channel i is input channel CHANNELS[i].
CHANNELS = tuple(i % 3 for i in range(16))
# As gpu_bench.INSTANCES (the GPU model is uploaded through gpu_bench's config).
INSTANCES = 2
CONCURRENCY: tuple[int, ...] = (1, 8, 32)
PATHS = ("bytes", "system", "cuda", "floor")
PATH_TITLES = {
    "bytes": "gRPC bytes (inline)",
    "system": "system shared memory",
    "cuda": "CUDA shared memory",
    "floor": "small-message floor",
    "inprocess": "in-process TensorRT",
}
# Child -> parent lines on stdout.
READY, STOPPED, RESULT = "SHMBENCH-READY", "SHMBENCH-STOPPED", "SHMBENCH-RESULT "


def make_input() -> np.ndarray:
    """The input every path sends (gpu_bench.make_input: the same numbers)."""
    np.random.seed(0)
    return np.random.rand(*INPUT_SHAPE).astype(np.float32) - 0.5


def cpu_reference(x: np.ndarray) -> np.ndarray:
    """What the CPU model computes."""
    return np.ascontiguousarray(x[:, list(CHANNELS), : OUTPUT_SHAPE[2], : OUTPUT_SHAPE[3]])


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@dataclass
class CellSpec:
    """What one load child does: `slots` concurrent requests on `path` against `address`."""

    address: str
    path: str
    slots: int
    mode: str
    warmup_s: float
    duration_s: float
    tag: str
    cpu_model: bool


@dataclass
class ChildResult:
    """What one load child measured; latencies in seconds, for the window only."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    warmup_requests: int = 0
    warmup_errors: int = 0
    cpu_s: float = 0.0
    window_s: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)
    setup_s: float = 0.0


# --- the child: tritonclient only ------------------------------------------------------------


class Window:
    """The timed window: requests completing in [start, end) count; none start after end."""

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("inf")
        self.cpu_at_start = 0.0

    def open(self, duration_s: float) -> None:
        self.cpu_at_start = time.process_time()
        self.end = time.perf_counter() + duration_s
        self.start = self.end - duration_s

    def close_now(self) -> None:
        now = time.perf_counter()
        self.start, self.end = min(self.start, now), now


class Slot:
    """One concurrent request slot: its region (none for bytes), request input and output."""

    def __init__(self, spec: CellSpec, index: int, x: np.ndarray) -> None:
        import tritonclient.grpc as grpcclient

        self.spec = spec
        self.name = f"{spec.tag}_{index}"
        self.key = f"/{self.name}"
        self.handle: Any = None
        self.registered = False
        self.input = grpcclient.InferInput(INPUT_NAME, list(INPUT_SHAPE), "FP32")
        self.output = grpcclient.InferRequestedOutput(OUTPUT_NAME)
        if spec.path == "bytes":
            self.input.set_data_from_numpy(x)
            return
        # The floor gets the very requests of the system path (its regions are never made).
        self.input.set_shared_memory(self.name, INPUT_BYTES, offset=0)
        self.output.set_shared_memory(self.name, OUTPUT_BYTES, offset=INPUT_BYTES)
        if spec.path == "system":
            import tritonclient.utils.shared_memory as shm

            self.handle = shm.create_shared_memory_region(self.name, self.key, REGION_BYTES)
            shm.set_shared_memory_region(self.handle, [x])
        elif spec.path == "cuda":
            import tritonclient.utils.cuda_shared_memory as cudashm

            self.handle = cudashm.create_shared_memory_region(self.name, REGION_BYTES, 0)
            cudashm.set_shared_memory_region(self.handle, [x])

    def register(self, client: Any) -> None:
        if self.spec.path == "system":
            client.register_system_shared_memory(self.name, self.key, REGION_BYTES)
            self.registered = True
        elif self.spec.path == "cuda":
            import tritonclient.utils.cuda_shared_memory as cudashm

            raw = cudashm.get_raw_handle(self.handle)
            client.register_cuda_shared_memory(self.name, raw, 0, REGION_BYTES)
            self.registered = True

    def poison(self, x: np.ndarray) -> None:
        """Fill the output area with NaN, so a stale region cannot pass the check."""
        nan = np.full(OUTPUT_SHAPE, np.nan, dtype=np.float32)
        if self.spec.path == "system":
            import tritonclient.utils.shared_memory as shm

            shm.set_shared_memory_region(self.handle, [nan], offset=INPUT_BYTES)
        elif self.spec.path == "cuda":
            import tritonclient.utils.cuda_shared_memory as cudashm

            cudashm.set_shared_memory_region(self.handle, [x, nan])

    def read_output(self) -> np.ndarray:
        """The output as the region holds it (a copy)."""
        if self.spec.path == "system":
            import tritonclient.utils.shared_memory as shm

            view = shm.get_contents_as_numpy(self.handle, np.float32, OUTPUT_SHAPE, INPUT_BYTES)
            out: np.ndarray = np.array(view, copy=True)
            del view
            return out
        import tritonclient.utils.cuda_shared_memory as cudashm

        whole = cudashm.get_contents_as_numpy(self.handle, np.uint8, [REGION_BYTES])
        return np.array(whole[INPUT_BYTES:].view(np.float32).reshape(OUTPUT_SHAPE), copy=True)

    def close(self, client: Any) -> None:
        try:
            if self.registered and self.spec.path == "system":
                client.unregister_system_shared_memory(self.name)
            elif self.registered and self.spec.path == "cuda":
                client.unregister_cuda_shared_memory(self.name)
        finally:
            if self.spec.path == "system" and self.handle is not None:
                import tritonclient.utils.shared_memory as shm

                shm.destroy_shared_memory_region(self.handle)
            elif self.spec.path == "cuda" and self.handle is not None:
                import tritonclient.utils.cuda_shared_memory as cudashm

                cudashm.destroy_shared_memory_region(self.handle)
            self.handle = None


def check_slots(
    client: Any, spec: CellSpec, slots: Sequence[Slot], x: np.ndarray
) -> dict[str, Any]:
    """One request per slot before the window: replies and regions as they must be."""
    import tritonclient.grpc as grpcclient

    checks: dict[str, Any] = {}
    if spec.path == "floor":
        reply = client.infer(MODEL, [slots[0].input], outputs=[slots[0].output]).get_response()
        checks["floor_reply_bytes"] = reply.ByteSize()
        return checks
    inline = grpcclient.InferInput(INPUT_NAME, list(INPUT_SHAPE), "FP32")
    inline.set_data_from_numpy(x)
    out = client.infer(MODEL, [inline], outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)])
    reference = out.as_numpy(OUTPUT_NAME)
    checks["inline_sha256"] = digest(reference)
    checks["inline_shape_ok"] = list(reference.shape) == list(OUTPUT_SHAPE)
    if spec.cpu_model:
        checks["inline_equals_numpy"] = bool(np.array_equal(reference, cpu_reference(x)))
    if spec.path == "bytes":
        return checks
    equal, empty, shapes = True, True, True
    for slot in slots:
        slot.poison(x)
        result = client.infer(MODEL, [slot.input], outputs=[slot.output])
        reply = result.get_response()
        empty &= len(reply.raw_output_contents) <= 1 and all(
            len(raw) == 0 for raw in reply.raw_output_contents
        )
        shapes &= [list(o.shape) for o in reply.outputs] == [list(OUTPUT_SHAPE)]
        equal &= bool(np.array_equal(slot.read_output(), reference))
    checks["region_equals_inline"] = equal
    checks["reply_raw_entry_empty"] = empty
    checks["reply_shape_ok"] = shapes
    checks["reply_bytes"] = reply.ByteSize()
    return checks


def record(window: Window, result: ChildResult, started: float, error: Exception | None) -> None:
    """Count one completed request if it completed inside the window."""
    ended = time.perf_counter()
    if window.start <= ended < window.end:
        if error is None:
            result.latencies.append(ended - started)
        else:
            result.errors += 1
            if len(result.error_messages) < 5:
                result.error_messages.append(f"{type(error).__name__}: {error}"[:500])
    elif ended < window.start:
        result.warmup_requests += 1
        if error is not None:
            result.warmup_errors += 1
            if len(result.error_messages) < 5:
                result.error_messages.append(f"warm-up {type(error).__name__}: {error}"[:500])


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def control(spec: CellSpec, window: Window) -> None:
    """After warm-up: READY; on the parent's GO line open the window; STOPPED at its end."""
    time.sleep(spec.warmup_s)
    say(READY)
    if sys.stdin.readline().strip() != "GO":  # the parent went away: stop at once
        window.close_now()
        return
    window.open(spec.duration_s)
    time.sleep(spec.duration_s)
    say(STOPPED)


async def run_aio(spec: CellSpec, slots: Sequence[Slot], result: ChildResult) -> None:
    """One tritonclient.grpc.aio client (one channel), one task per slot."""
    import tritonclient.grpc.aio as aioclient

    window = Window()
    client = aioclient.InferenceServerClient(spec.address)

    async def worker(slot: Slot) -> None:
        while True:
            started = time.perf_counter()
            if started >= window.end:
                return
            try:
                await client.infer(MODEL, [slot.input], outputs=[slot.output])
                record(window, result, started, None)
            except Exception as e:  # counted; the loop goes on
                record(window, result, started, e)
                await asyncio.sleep(0.001)

    try:
        tasks = [asyncio.ensure_future(worker(slot)) for slot in slots]
        await asyncio.to_thread(control, spec, window)
        await asyncio.gather(*tasks)
        result.cpu_s = time.process_time() - window.cpu_at_start
        result.window_s = window.end - window.start
    finally:
        await client.close()


def run_threads(spec: CellSpec, slots: Sequence[Slot], result: ChildResult) -> None:
    """One thread and one synchronous tritonclient.grpc client per slot."""
    import tritonclient.grpc as grpcclient

    window = Window()
    lock = threading.Lock()

    def worker(slot: Slot) -> None:
        client = grpcclient.InferenceServerClient(spec.address)
        try:
            while True:
                started = time.perf_counter()
                if started >= window.end:
                    return
                error: Exception | None = None
                try:
                    client.infer(MODEL, [slot.input], outputs=[slot.output])
                except Exception as e:  # counted; the loop goes on
                    error = e
                with lock:
                    record(window, result, started, error)
                if error is not None:
                    time.sleep(0.001)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
    for t in threads:
        t.start()
    control(spec, window)
    for t in threads:
        t.join()
    result.cpu_s = time.process_time() - window.cpu_at_start
    result.window_s = window.end - window.start


def child_main(spec: CellSpec) -> int:
    """Set up the slots, check them, warm up, measure the window, tear down; print RESULT."""
    import tritonclient.grpc as grpcclient

    # Only ctypes: no trtserve protobuf module is loaded next to tritonclient's.
    from trtserve.protocol.allocator import reuse_freed_memory

    reuse_freed_memory()
    began = time.perf_counter()
    x = make_input()
    result = ChildResult()
    client = grpcclient.InferenceServerClient(spec.address)
    slots: list[Slot] = []
    try:
        for index in range(spec.slots):
            slots.append(Slot(spec, index, x))
            slots[-1].register(client)
        result.checks = check_slots(client, spec, slots, x)
        result.setup_s = round(time.perf_counter() - began, 3)
        if spec.mode == "aio":
            asyncio.run(run_aio(spec, slots, result))
        else:
            run_threads(spec, slots, result)
    finally:
        for slot in slots:
            try:
                slot.close(client)
            except Exception as e:  # reported; the other slots are still closed
                result.error_messages.append(f"teardown {slot.name}: {e}"[:500])
        client.close()
    say(RESULT + json.dumps(asdict(result)))
    return 0


# --- the parent: servers and cells ---------------------------------------------------------


@dataclass
class Cell:
    """One measured (path, concurrency): merged over the load children."""

    path: str
    concurrency: int
    client_procs: int
    mode: str
    requests: int = 0
    per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    errors: int = 0
    warmup_errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    window_s: float = 0.0
    server_cpu_us: float | None = None
    server_loop_cpu_us: float | None = None
    client_cpu_us: float = 0.0
    # The busiest load child's CPU over the window, in cores (1.0: one core saturated).
    client_max_cores: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread."""
    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split(total: int, parts: int) -> list[int]:
    """`total` slots over `parts` processes, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Children:
    """The load children of one cell, their stdout lines gathered on one queue."""

    def __init__(self, specs: Sequence[CellSpec], stderr_dir: Path) -> None:
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.popens: list[subprocess.Popen[str]] = []
        self.stderr: list[TextIO] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for i, spec in enumerate(specs):
            err = (stderr_dir / f"{spec.tag}.stderr").open("w+")
            self.stderr.append(err)
            command = [sys.executable, str(Path(__file__).resolve()), "--child"]
            popen = subprocess.Popen(
                [*command, json.dumps(asdict(spec))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
            self.popens.append(popen)
            threading.Thread(target=self._pump, args=(i, popen), daemon=True).start()

    def _pump(self, index: int, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            self.lines.put((index, line.rstrip("\n")))
        # None, not "": a child may print an empty line, which is not its end.
        self.lines.put((index, None))

    def wait_for(self, prefix: str, timeout: float) -> dict[int, str]:
        """Each child's first line starting with `prefix`; RuntimeError on exit or timeout."""
        found: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(self.popens):
            try:
                index, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"load children: no {prefix} within {timeout} s") from None
            if line is None:
                if index not in found:
                    # The exit status too: a child killed by a signal leaves no stderr.
                    code = self.popens[index].wait(timeout=30)
                    raise RuntimeError(
                        f"load child {index} exited (status {code}) before {prefix}:\n"
                        + self.tail(index)
                    )
                continue
            if line.startswith(prefix):
                found.setdefault(index, line[len(prefix) :])
        return found

    def go(self) -> None:
        for popen in self.popens:
            assert popen.stdin is not None
            popen.stdin.write("GO\n")
            popen.stdin.flush()

    def tail(self, index: int) -> str:
        err = self.stderr[index]
        err.flush()
        err.seek(0)
        return err.read()[-3000:]

    def close(self) -> None:
        for popen in self.popens:
            if popen.stdin is not None:
                popen.stdin.close()
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)
        for err in self.stderr:
            err.close()


@dataclass
class Target:
    """A server the load is pointed at, and what it is called in the report."""

    address: str
    server: ServerUnderTest | None
    cpu_model: bool


def run_cell(
    target: Target,
    path: str,
    concurrency: int,
    procs: int,
    mode: str,
    warmup_s: float,
    duration_s: float,
    work: Path,
    profile: Callable[[ServerUnderTest, float], None] | None = None,
) -> Cell:
    """One cell: spawn the children, wait until warm, open the window, merge the results."""
    n = min(procs, concurrency)
    cell = Cell(path, concurrency, n, mode)
    tag = f"shmb{os.getpid()}_{path}_{concurrency}_{int(time.monotonic() * 1e3) % 100000}"
    specs = [
        CellSpec(
            target.address, path, slots, mode, warmup_s, duration_s, f"{tag}_{i}", target.cpu_model
        )
        for i, slots in enumerate(split(concurrency, n))
    ]
    children = Children(specs, work)
    server = target.server
    try:
        children.wait_for(READY, 180 + warmup_s)
        cpu0 = loop0 = 0.0
        if server is not None:
            cpu0, loop0 = server.cpu_s(), thread_cpu_s(server.pid, server.pid)
        children.go()
        profiler: threading.Thread | None = None
        if profile is not None and server is not None:
            profiler = threading.Thread(target=profile, args=(server, duration_s * 0.8))
            profiler.start()
        children.wait_for(STOPPED, duration_s + 60)
        if server is not None:
            cpu1, loop1 = server.cpu_s(), thread_cpu_s(server.pid, server.pid)
        results = children.wait_for(RESULT, 120)
        if profiler is not None:
            profiler.join()
    finally:
        children.close()
    merged = [ChildResult(**json.loads(results[i])) for i in sorted(results)]
    latencies = [v for r in merged for v in r.latencies]
    cell.window_s = round(max(r.window_s for r in merged), 3)
    cell.requests = len(latencies)
    cell.errors = sum(r.errors for r in merged)
    cell.warmup_errors = sum(r.warmup_errors for r in merged)
    cell.error_messages = [m for r in merged for m in r.error_messages][:5]
    if latencies:
        ms = np.asarray(latencies) * 1e3
        # Each child's own window: requests over its length, summed over the children.
        cell.per_s = round(sum(len(r.latencies) / r.window_s for r in merged if r.window_s), 1)
        cell.p50_ms = round(float(np.percentile(ms, 50)), 3)
        cell.p99_ms = round(float(np.percentile(ms, 99)), 3)
        cell.mean_ms = round(float(ms.mean()), 3)
        done = cell.requests + cell.errors
        if server is not None:
            cell.server_cpu_us = round((cpu1 - cpu0) / done * 1e6, 1)
            cell.server_loop_cpu_us = round((loop1 - loop0) / done * 1e6, 1)
        cell.client_cpu_us = round(sum(r.cpu_s for r in merged) / done * 1e6, 1)
        cell.client_max_cores = round(max(r.cpu_s / r.window_s for r in merged if r.window_s), 2)
    cell.checks = merge_checks([r.checks for r in merged])
    return cell


def merge_checks(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Booleans: all true; digests: the set; other values: the first child's."""
    merged: dict[str, Any] = {}
    for one in checks:
        for key, value in one.items():
            if isinstance(value, bool):
                merged[key] = merged.get(key, True) and value
            elif key.endswith("sha256"):
                values = set(value) if isinstance(value, list) else {value}
                merged[key] = sorted(set(merged.get(key, [])) | values)
            else:
                merged.setdefault(key, value)
    return merged


# --- models and servers ----------------------------------------------------------------------


def build_cpu_model() -> bytes:
    """x (1x3x224x224) -> Slice to 222x222 -> Gather 16 channels (0,1,2,0,1,...) -> output0.

    Slicing first leaves one copy of the output's size (the Gather) per request.
    """
    import onnx
    from onnx import TensorProto, helper

    indices = helper.make_tensor("channels", TensorProto.INT64, [len(CHANNELS)], list(CHANNELS))
    starts = helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [2], list(OUTPUT_SHAPE[2:]))
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    graph = helper.make_graph(
        [
            helper.make_node("Slice", [INPUT_NAME, "starts", "ends", "axes"], ["cropped"]),
            helper.make_node("Gather", ["cropped", "channels"], [OUTPUT_NAME], axis=1),
        ],
        "shm_bench_copy",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, list(OUTPUT_SHAPE))],
        initializer=[indices, starts, ends, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def cpu_config() -> str:
    """The CPU model's config.pbtxt: no batching, INSTANCES CPU instances of one thread."""
    in_dims = ", ".join(str(d) for d in INPUT_SHAPE)
    out_dims = ", ".join(str(d) for d in OUTPUT_SHAPE)
    return (
        f'name: "{MODEL}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f'input [ {{ name: "{INPUT_NAME}", data_type: TYPE_FP32, dims: [ {in_dims} ] }} ]\n'
        f'output [ {{ name: "{OUTPUT_NAME}", data_type: TYPE_FP32, dims: [ {out_dims} ] }} ]\n'
        f"instance_group [ {{ count: {INSTANCES}, kind: KIND_CPU }} ]\n"
        'parameters { key: "intra_op_threads" value: { string_value: "1" } }\n'
    )


def start_cpu_server(repository: Path, extra: Sequence[str] = ()) -> ServerUnderTest:
    """`trtserve serve --repository` holding the CPU model; `extra`: more flags."""
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "config.pbtxt").write_text(cpu_config())
    (repository / MODEL / "1" / "model.onnx").write_bytes(build_cpu_model())
    return start(repository, ["--log-level", "WARNING", *extra], timeout=120)


def start_gpu_server(
    repository: Path,
    plan: Path,
    runtimes_dir: Path,
    versions: Sequence[str],
    extra: Sequence[str] = (),
) -> tuple[ServerUnderTest, float]:
    """As gpu_bench.py: lean runtimes preloaded, the plan uploaded with its instance count."""
    import gpu_bench

    from trtserve.client import InferenceClient

    server = gpu_bench.start_server(repository, runtimes_dir, versions, extra)
    try:
        with InferenceClient(server.address, timeout=300) as client:
            started = time.perf_counter()
            client.upload_model(MODEL, plan, config_json=gpu_bench.model_config(INSTANCES))
            upload_ms = round((time.perf_counter() - started) * 1e3, 1)
    except BaseException:
        server.stop()
        raise
    return server, upload_ms


def start_floor() -> ServerUnderTest:
    args = [str(HERE / "floor_server.py"), "--model", MODEL, "--placed-outputs"]
    args += ["--output", f"{OUTPUT_NAME}:FP32:{','.join(str(d) for d in OUTPUT_SHAPE)}"]
    return launch(args, "floor")


def measure_inprocess(plan: Path, runtimes_dir: Path, iterations: int) -> dict[str, Any]:
    """gpu_bench.py's direct measurement: one context, and two on two streams and threads."""
    import gpu_bench

    libraries = gpu_bench.lean_libraries(runtimes_dir)
    measures, info = gpu_bench.measure_direct(plan, libraries, iterations)
    return {"measures": [asdict(m) for m in measures], "info": info}


# --- py-spy ----------------------------------------------------------------------------------


def make_profiler(
    out_dir: Path, native: bool = False
) -> Callable[[ServerUnderTest, float], None] | None:
    """py-spy on the server for one window: raw stacks and a `top`-like summary of them.

    `native`: C and C++ frames too (grpc's core, CUDA), at a lower sampling rate."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return None

    def profile(server: ServerUnderTest, seconds: float) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        raw = out_dir / "shm_bench_server.stacks.txt"
        command = [py_spy, "record", "--pid", str(server.pid), "--threads", "--format", "raw"]
        # Under --workers the pid is the supervisor's: its workers are its subprocesses.
        command += ["--subprocesses"]
        # Native stacks need the process stopped while it is sampled (no --nonblocking).
        command += ["--native", "--rate", "200"] if native else ["--nonblocking"]
        command += [
            "--duration",
            str(max(1, round(seconds))),
            "--output",
            str(raw),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        top = out_dir / "shm_bench_server.top.txt"
        if done.returncode != 0 or not raw.is_file():
            top.write_text(f"py-spy failed ({done.returncode}):\n{done.stderr[-3000:]}\n")
            return
        top.write_text(summarize_stacks(raw.read_text()))

    return profile


def summarize_stacks(text: str, rows: int = 30) -> str:
    """Self and total sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    lines = [f"{samples} samples (every thread; idle threads blocked in C count as busy)", ""]
    for title, table in (("self", own), ("total", total)):
        lines.append(f"%{title:>5}  function")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:rows]:
            lines.append(f"{100 * count / max(1, samples):6.1f}  {frame}")
        lines.append("")
    return "\n".join(lines)


# --- report ----------------------------------------------------------------------------------


def inprocess_rows(inprocess: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The in-process measures by the concurrency they stand for: one context for 1, two
    contexts on two streams (the server's instance count) for 8 and 32."""
    by_name = {m["name"]: m for m in inprocess.get("measures", [])}
    single = by_name.get("direct: H2D + execute + D2H")
    pair = next((m for n, m in by_name.items() if "contexts" in n), None)
    rows: dict[int, dict[str, Any]] = {}
    if single is not None:
        rows[1] = single
    if pair is not None:
        rows[8] = rows[32] = pair
    return rows


def ratios(cells: Sequence[Cell], inprocess: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Throughput ratios per concurrency."""
    by = {(c.path, c.concurrency): c for c in cells if c.requests}
    direct = inprocess_rows(inprocess)
    out: dict[int, dict[str, float]] = {}
    for concurrency in CONCURRENCY:
        rate = {p: c.per_s for (p, n), c in by.items() if n == concurrency}
        in_process = direct.get(concurrency)
        if in_process is not None:
            rate["in-process"] = float(in_process["per_s"])
        row: dict[str, float] = {}
        for a, b in (
            ("cuda", "in-process"),
            ("cuda", "floor"),
            ("system", "floor"),
            ("system", "bytes"),
            ("cuda", "bytes"),
        ):
            if rate.get(a) and rate.get(b):
                row[f"{a} / {b}"] = round(rate[a] / rate[b], 3)
        out[concurrency] = row
    return out


def markdown(report: dict[str, Any]) -> str:
    cells = [Cell(**c) for c in report["cells"]]
    lines = [
        f"Shared-memory benchmark, {report['model']} ({report['device']}, {report['date']})",
        "",
        f"Client: tritonclient {report['client_mode']} in up to {report['client_procs']} "
        f"process(es), concurrency split across them; {report['warmup_s']} s warm-up, "
        f"{report['duration_s']} s window per cell. Machine: {report['machine']}. "
        f"trtserve worker processes: {report.get('workers', 1)}; serve arguments: "
        f"{' '.join(report.get('serve_args', [])) or 'none'}.",
        "",
        "| path | c | req/s | p50 ms | p99 ms | errors | server CPU µs/req (loop) "
        "| client CPU µs/req | busiest client proc, cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in cells:
        title = PATH_TITLES[cell.path]
        if not cell.requests:
            lines.append(f"| {title} | {cell.concurrency} | n/a | | | {cell.errors} | | | |")
            continue
        server = (
            f"{cell.server_cpu_us:,.0f} ({cell.server_loop_cpu_us:,.0f})"
            if cell.server_cpu_us is not None and cell.server_loop_cpu_us is not None
            else ""
        )
        lines.append(
            f"| {title} | {cell.concurrency} | {cell.per_s:,.0f} | {cell.p50_ms:.3f} | "
            f"{cell.p99_ms:.3f} | {cell.errors} | {server} | {cell.client_cpu_us:,.0f} | "
            f"{cell.client_max_cores:.2f} |"
        )
    for concurrency, m in sorted(inprocess_rows(report.get("inprocess", {})).items()):
        lines.append(
            f"| {PATH_TITLES['inprocess']} ({m['name'].removeprefix('direct: ')}) | "
            f"{concurrency} | {m['per_s']:,.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | 0 "
            "| | | |"
        )
    keys = ["system / bytes", "system / floor", "cuda / bytes", "cuda / floor", "cuda / in-process"]
    lines += ["", "| req/s ratio | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
    for concurrency, row in report["ratios"].items():
        values = " | ".join(f"{row[k]:g}x" if k in row else "" for k in keys)
        lines.append(f"| c={concurrency} | {values} |")
    lines.append("")
    for path in PATHS:
        checks = report["checks"].get(path)
        if checks:
            lines.append(f"- checks, {PATH_TITLES[path]}: {json.dumps(checks)}")
    for cell in cells:
        if cell.errors or cell.warmup_errors or cell.error_messages:
            lines.append(
                f"- errors, {PATH_TITLES[cell.path]} c={cell.concurrency}: {cell.errors} in the "
                f"window, {cell.warmup_errors} in warm-up: {cell.error_messages}"
            )
    for note in report["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def cuda_devices() -> int:
    from trtserve.server.runtime.cuda_device import cuda_device_count

    return cuda_device_count()


def probe_mode(
    floor: Target, procs: int, warmup_s: float, seconds: float, work: Path
) -> tuple[str, dict[str, float]]:
    """The client style that drives the floor faster at concurrency 8."""
    rates: dict[str, float] = {}
    for mode in ("aio", "threads"):
        cell = run_cell(floor, "floor", 8, procs, mode, warmup_s, seconds, work)
        rates[mode] = cell.per_s
        print(f"probe: {mode} on the floor at c=8: {cell.per_s:,.0f} req/s", flush=True)
    return max(rates, key=lambda m: rates[m]), rates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the ONNX model, no GPU needed")
    parser.add_argument("--runtimes-dir", type=Path, help="lean runtimes (<dir>/<version>/...)")
    parser.add_argument("--plans", type=Path, help="folder holding the conv plan (GPU)")
    parser.add_argument("--out", type=Path, help="JSON results file (a .md goes beside it)")
    parser.add_argument("--duration-s", type=float, default=5.0, help="window per cell (5)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="warm-up per cell (1)")
    default_procs = max(1, min(8, (os.cpu_count() or 2) // 2))
    parser.add_argument(
        "--client-procs", type=int, default=default_procs, help=f"load processes ({default_procs})"
    )
    parser.add_argument(
        "--client-mode",
        choices=("auto", "aio", "threads"),
        default="auto",
        help="tritonclient.grpc.aio tasks or sync clients in threads; auto: the faster on the "
        "floor at c=8 (default)",
    )
    parser.add_argument("--probe-s", type=float, default=2.0, help="window of each auto probe (2)")
    parser.add_argument("--iterations", type=int, default=2000, help="in-process iterations")
    parser.add_argument(
        "--concurrency", type=int, action="append", help="instead of 1, 8 and 32 (repeat)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the server during one cell (--profile-cell) into DIR, if py-spy exists",
    )
    parser.add_argument("--profile-cell", default="system:8", help="PATH:CONCURRENCY (system:8)")
    parser.add_argument(
        "--profile-native", action="store_true", help="--profile with C and C++ frames too"
    )
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated paths to measure ({','.join(PATHS)}); in-process always on a GPU",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="trtserve's worker processes (serve --workers)"
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `trtserve serve` argument, e.g. --serve-arg=--gpu-wait=block (repeat)",
    )
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(CellSpec(**json.loads(args.child)))
    if args.out is None:
        parser.error("--out is required")
    global CONCURRENCY
    if args.concurrency:
        CONCURRENCY = tuple(args.concurrency)

    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "client_procs": args.client_procs,
        "workers": args.workers,
        "serve_args": args.serve_arg,
        "concurrency": list(CONCURRENCY),
        "notes": [],
        "checks": {},
    }
    notes: list[str] = report["notes"]
    gpus = 0 if args.cpu else cuda_devices()
    if not args.cpu and gpus == 0:
        parser.error("no CUDA device is visible: run with --cpu")
    if not args.cpu and (args.runtimes_dir is None or args.plans is None):
        parser.error("--runtimes-dir and --plans are required on a GPU (or --cpu)")
    workers = ["--workers", str(args.workers)] if args.workers > 1 else []
    workers += args.serve_arg
    work = Path(tempfile.mkdtemp(prefix="trtserve-shm-bench-"))
    cells: list[Cell] = []
    servers: list[ServerUnderTest] = []
    failed: list[str] = []
    try:
        if args.cpu:
            report["model"] = (
                "ONNX Slice+Gather copy, 1x3x224x224 FP32 in (0.6 MB), 1x16x222x222 FP32 out "
                f"(3.2 MB), {INSTANCES} CPU instances, intra_op_threads 1"
            )
            report["device"] = "CPU only"
            server = start_cpu_server(work / "repository", workers)
            notes.append("CUDA shared memory and in-process TensorRT: skipped (--cpu, no GPU)")
        else:
            import gpu_bench

            plan = (args.plans / gpu_bench.PLAN_NAME).resolve()
            runtimes_dir = args.runtimes_dir.resolve()
            report["model"] = f"{gpu_bench.PLAN_NAME}, {INSTANCES} GPU instances"
            report["device"] = gpu_bench.gpu_name()
            try:
                report["inprocess"] = measure_inprocess(plan, runtimes_dir, args.iterations)
            except Exception as e:  # keep going: the server rows still mean something
                failed.append(f"in-process: {type(e).__name__}: {e}")
            print("in-process done", flush=True)
            versions = list(gpu_bench.lean_libraries(runtimes_dir))
            server, report["upload_ms"] = start_gpu_server(
                work / "repository", plan, runtimes_dir, versions, workers
            )
        servers.append(server)
        floor_server = start_floor()
        servers.append(floor_server)
        trtserve = Target(server.address, server, args.cpu)
        floor = Target(floor_server.address, floor_server, args.cpu)
        if args.client_mode == "auto":
            mode, report["client_probe"] = probe_mode(
                floor, args.client_procs, args.warmup_s, args.probe_s, work
            )
        else:
            mode = args.client_mode
        report["client_mode"] = mode
        profiler = make_profiler(args.profile, args.profile_native) if args.profile else None
        if args.profile and profiler is None:
            notes.append("--profile: py-spy is not installed, no profile taken")
        wanted = set(args.paths.split(","))
        for path in PATHS:
            if path not in wanted or (path == "cuda" and gpus == 0):
                continue
            for concurrency in CONCURRENCY:
                profile = profiler if args.profile_cell == f"{path}:{concurrency}" else None
                target = floor if path == "floor" else trtserve
                try:
                    cell = run_cell(
                        target,
                        path,
                        concurrency,
                        args.client_procs,
                        mode,
                        args.warmup_s,
                        args.duration_s,
                        work,
                        profile,
                    )
                except Exception as e:  # one cell failing must not lose the others
                    cell = Cell(path, concurrency, 0, mode, note=f"{type(e).__name__}: {e}")
                    failed.append(f"{path} c={concurrency}: {cell.note[:2000]}")
                cells.append(cell)
                print(
                    f"{path} c={concurrency}: {cell.per_s:,.0f} req/s, p50 {cell.p50_ms} ms, "
                    f"errors {cell.errors}",
                    flush=True,
                )
                if profile is not None:
                    notes.append(
                        f"py-spy profile of the server during {path} c={concurrency}: "
                        f"{args.profile}/shm_bench_server.top.txt"
                    )
    finally:
        report["server_exit"] = [s.stop() for s in servers]
        if servers:
            report["server_log_tail"] = "".join(servers[0].output[-20:])
        shutil.rmtree(work, ignore_errors=True)
    for path in PATHS:
        path_checks = [c.checks for c in cells if c.path == path and c.checks]
        if path_checks:
            report["checks"][path] = merge_checks(path_checks)
    expected = report.get("inprocess", {}).get("info", {}).get("output_sha256")
    bytes_digests = report["checks"].get("bytes", {}).get("inline_sha256")
    if expected and bytes_digests:
        report["checks"]["bytes_equals_inprocess"] = bytes_digests == [expected]
    report["cells"] = [asdict(c) for c in cells]
    report["ratios"] = ratios(cells, report.get("inprocess", {}))
    bad = [
        f"{p}: {k}"
        for p, checks in report["checks"].items()
        for k, v in (checks.items() if isinstance(checks, dict) else [])
        if v is False
    ]
    if report["checks"].get("bytes_equals_inprocess") is False:
        bad.append("bytes output differs from the in-process output")
    failed += [f"check failed: {b}" for b in bad]
    failed += [f"{c.path} c={c.concurrency}: {c.errors} errors" for c in cells if c.errors]
    notes += [f"FAILED {line}" for line in failed]
    write_report(args.out, report, markdown(report))
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def write_report(out: Path, report: dict[str, Any], table: str) -> None:
    """The JSON to `out`, the markdown table beside it (.md), and the table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
