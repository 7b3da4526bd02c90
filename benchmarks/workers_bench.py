"""`trtserve serve --workers N` against N bare floor processes: does the server scale with workers?

    python benchmarks/workers_bench.py --runtimes-dir /tmp/lean --plans .gpu/plans \\
        --out results/workers_bench.json                   # on the GPU machine
    python benchmarks/workers_bench.py --cpu --workers-list 1 --seconds 2 \\
        --out /tmp/workers_bench.json                      # anywhere, no GPU

The model takes 1x3x224x224 FP32 (0.6 MB) and returns 1x16x222x222 FP32 (3.2 MB): on a GPU the
real plan (conv_relu_trt11.0.0.114.plan, written into a temporary repository with
multi_gpu_bench.py's helper, gpu_bench.py's 2 instances per worker, every lean runtime of
--runtimes-dir preloaded); with --cpu shm_bench.py's ONNX copy model of the same tensor sizes
(2 CPU instances per worker, one thread each).

For each N of --workers-list (1, 2, 4, 8), side by side in one run (the order alternating
from one N to the next, so that drift does not favour one side):

(1) trtserve: `trtserve serve --workers N` (`--workers` is passed only for N > 1, so N=1 runs on
    a trtserve without the flag), one gRPC port that the N workers share through SO_REUSEPORT,
    driven by N load processes;
(2) the floor: N floor_server.py processes, each on its own port and driven by its own load
    process, each answering ModelInfer with a prebuilt reply of the output's size (3.2 MB):
    what N Python gRPC processes can do with such messages, doing nothing else.

Each load process runs tritonclient.grpc.aio in a closed loop at --concurrency (8) with the
tensors inline in the messages (raw_input_contents / raw_output_contents), over --channels
connections (as many as the concurrency by default: SO_REUSEPORT spreads connections, not
requests, over the workers; the table shows how they landed). Before the warm-up each load
process sends one request over each of its connections and checks the reply: the trtserve
outputs must be bit-equal to the first trtserve point's (and, with --cpu, to numpy's); then
--warmup-s of load, then the --seconds window, errors counted.

Writes the JSON to --out and a markdown table beside it (.md), and prints the table. tritonclient
cannot share an interpreter with trtserve.protocol (the same protobuf names): the load runs in
children started as `workers_bench.py --child SPEC`, which import only tritonclient (and
trtserve's ctypes allocator), and shm_bench.py's child helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script: the sibling modules are importable from the script's folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, launch, process_tree, start
from shm_bench import (
    INPUT_NAME,
    INPUT_SHAPE,
    INSTANCES,
    MODEL,
    OUTPUT_BYTES,
    OUTPUT_NAME,
    OUTPUT_SHAPE,
    READY,
    RESULT,
    STOPPED,
    CellSpec,
    Children,
    ChildResult,
    Window,
    control,
    cpu_reference,
    digest,
    make_input,
    merge_checks,
    record,
    say,
    write_report,
)

HERE = Path(__file__).resolve().parent
WORKERS: tuple[int, ...] = (1, 2, 4, 8)
# The targets.
FLOOR_TARGET = 0.8  # trtserve at least this share of the floors' sum, at every N
SCALE_AT, SCALE_TARGET = 4, 3.0  # at N=4, at least 3x trtserve with one worker
TITLES = {"trtserve": "trtserve --workers N", "floor": "N floor processes"}


@dataclass
class LoadSpec(CellSpec):
    """One load process: CellSpec's fields (path "bytes", mode "aio") over `channels`
    connections, each its own TCP connection."""

    channels: int = 1


# --- the child: tritonclient only ------------------------------------------------------------


def channel_args(index: int) -> list[tuple[str, Any]]:
    """tritonclient's message limits; a subchannel pool of its own, so that every channel opens
    its own TCP connection (grpc shares one between channels of equal arguments otherwise)."""
    return [
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.use_local_subchannel_pool", 1),
        ("workers_bench.channel", index),
    ]


async def check_channels(clients: Sequence[Any], spec: LoadSpec, x: np.ndarray) -> dict[str, Any]:
    """One request over each connection before the warm-up: the replies' shape, size, digest."""
    import tritonclient.grpc as grpcclient

    shape_ok, size_ok, numpy_ok = True, True, True
    digests: set[str] = set()
    for client in clients:
        inline = grpcclient.InferInput(INPUT_NAME, list(INPUT_SHAPE), "FP32")
        inline.set_data_from_numpy(x)
        out = await client.infer(
            MODEL, [inline], outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)]
        )
        array = out.as_numpy(OUTPUT_NAME)
        shape_ok &= list(array.shape) == list(OUTPUT_SHAPE)
        size_ok &= array.nbytes == OUTPUT_BYTES
        digests.add(digest(array))
        if spec.cpu_model:
            numpy_ok &= bool(np.array_equal(array, cpu_reference(x)))
    checks: dict[str, Any] = {
        "output_sha256": sorted(digests),
        "output_shape_ok": shape_ok,
        "output_bytes_ok": size_ok,
        "connections_checked": len(clients),
    }
    if spec.cpu_model:
        checks["output_equals_numpy"] = numpy_ok
    return checks


async def run_load(spec: LoadSpec, result: ChildResult) -> None:
    """`spec.slots` tasks over `spec.channels` clients; the window as shm_bench's children."""
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    began = time.perf_counter()
    x = make_input()
    clients = [
        aioclient.InferenceServerClient(spec.address, channel_args=channel_args(i))
        for i in range(spec.channels)
    ]
    try:
        result.checks = await check_channels(clients, spec, x)
        result.setup_s = round(time.perf_counter() - began, 3)
        request = grpcclient.InferInput(INPUT_NAME, list(INPUT_SHAPE), "FP32")
        request.set_data_from_numpy(x)
        wanted = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
        window = Window()

        async def worker(client: Any) -> None:
            while True:
                started = time.perf_counter()
                if started >= window.end:
                    return
                try:
                    await client.infer(MODEL, [request], outputs=wanted)
                    record(window, result, started, None)
                except Exception as e:  # counted; the loop goes on
                    record(window, result, started, e)
                    await asyncio.sleep(0.001)

        tasks = [
            asyncio.ensure_future(worker(clients[i % len(clients)])) for i in range(spec.slots)
        ]
        await asyncio.to_thread(control, spec, window)
        await asyncio.gather(*tasks)
        result.cpu_s = time.process_time() - window.cpu_at_start
        result.window_s = window.end - window.start
    finally:
        for client in clients:
            await client.close()


def child_main(spec: LoadSpec) -> int:
    # Only ctypes: no trtserve protobuf module is loaded next to tritonclient's.
    from trtserve.protocol.allocator import reuse_freed_memory

    reuse_freed_memory()
    result = ChildResult()
    asyncio.run(run_load(spec, result))
    say(RESULT + json.dumps(asdict(result)))
    return 0


# --- the parent: servers, load processes, /proc ---------------------------------------------


class LoadChildren(Children):
    """shm_bench's Children (READY, GO, STOPPED, RESULT), started as this script's children."""

    def __init__(self, specs: Sequence[LoadSpec], stderr_dir: Path) -> None:
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.popens: list[subprocess.Popen[str]] = []
        self.stderr = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for i, spec in enumerate(specs):
            err = (stderr_dir / f"{spec.tag}.stderr").open("w+")
            self.stderr.append(err)
            popen = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    json.dumps(asdict(spec)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
            self.popens.append(popen)
            threading.Thread(target=self._pump, args=(i, popen), daemon=True).start()


def process_memory(pids: Sequence[int]) -> dict[int, dict[str, float]]:
    """Resident memory (VmRSS) and, where nvidia-smi answers, GPU memory of each process, MiB."""
    gpu: dict[int, float] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory"]
        query.append("--format=csv,noheader,nounits")
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
        for line in done.stdout.splitlines():
            app, used = (part.strip() for part in line.split(","))
            gpu[int(app)] = float(used)
    memory: dict[int, dict[str, float]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            lines = status.splitlines()
            rss = next(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
            memory[pid] = {"rss_mib": round(rss / 1024, 1), "gpu_mib": gpu.get(pid, 0.0)}
    return memory


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_s() -> float:
    """CPU seconds every core of the host has spent busy (not idle, not waiting on I/O)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def connections_by_process(pids: Sequence[int], port: int) -> dict[int, int]:
    """Established TCP connections accepted on `port` that each process holds; only processes
    holding one or listening on the port (the workers) are in the answer."""
    established: set[str] = set()
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or int(cols[1].rsplit(":", 1)[1], 16) != port:
                continue
            if cols[3] == "01":
                established.add(cols[9])
            elif cols[3] == "0A":
                listening.add(cols[9])
    counts: dict[int, int] = {}
    for pid in pids:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
        if inodes & (established | listening):
            counts[pid] = len(inodes & established)
    return counts


@dataclass
class Side:
    """One side of one point: trtserve with N workers, or N floors; merged over its loads."""

    name: str
    workers: int
    requests: int = 0
    per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    errors: int = 0
    warmup_errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    window_s: float = 0.0
    # CPU of every server process (supervisor and workers, or every floor) per request.
    server_cpu_us: float | None = None
    # Each server process's CPU over the window, in cores, busiest first.
    server_process_cores: list[float] = field(default_factory=list)
    client_cpu_us: float = 0.0
    # The busiest load process's CPU over the window, in cores (1.0: one core saturated).
    client_max_cores: float = 0.0
    # What processes other than these servers and their loads took of the host over the
    # window, in cores: another run sharing the machine shows up here.
    others_cores: float | None = None
    # Connections each serving process held in the middle of the window, most first.
    connections: list[int] = field(default_factory=list)
    # Each server process's resident memory and GPU memory (MiB) once started, by pid.
    memory: dict[int, dict[str, float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    server_exit: list[int] = field(default_factory=list)
    note: str = ""


def measure(
    side: Side, addresses: Sequence[str], servers: Sequence[ServerUnderTest], args: Any, work: Path
) -> None:
    """One load process per address, all at once; fills `side` in."""
    tag = f"wb{os.getpid()}_{side.name}_{side.workers}"
    specs = [
        LoadSpec(
            address,
            "bytes",
            args.concurrency,
            "aio",
            args.warmup_s,
            args.seconds,
            f"{tag}_{i}",
            args.cpu and side.name == "trtserve",
            channels=args.channels or args.concurrency,
        )
        for i, address in enumerate(addresses)
    ]
    children = LoadChildren(specs, work)
    try:
        children.wait_for(READY, 300 + args.warmup_s)
        pids = [pid for server in servers for pid in process_tree(server.pid)]
        cpu0 = {pid: process_cpu_s(pid) for pid in pids}
        busy0 = busy_cpu_s()
        children.go()
        time.sleep(args.seconds / 2)
        by_pid: dict[int, int] = {}
        for server in servers:
            port = int(server.address.rsplit(":", 1)[1])
            by_pid |= connections_by_process(process_tree(server.pid), port)
        children.wait_for(STOPPED, args.seconds + 60)
        cpu1 = {pid: process_cpu_s(pid) for pid in pids}
        busy = busy_cpu_s() - busy0
        results = children.wait_for(RESULT, 120)
    finally:
        children.close()
    merged = [ChildResult(**json.loads(results[i])) for i in sorted(results)]
    latencies = [v for r in merged for v in r.latencies]
    side.window_s = round(max(r.window_s for r in merged), 3)
    side.requests = len(latencies)
    side.errors = sum(r.errors for r in merged)
    side.warmup_errors = sum(r.warmup_errors for r in merged)
    side.error_messages = [m for r in merged for m in r.error_messages][:5]
    side.connections = sorted(by_pid.values(), reverse=True)
    side.checks = merge_checks([r.checks for r in merged])
    if not latencies:
        return
    ms = np.asarray(latencies) * 1e3
    # Each load process's own window: its requests over its length, summed.
    side.per_s = round(sum(len(r.latencies) / r.window_s for r in merged if r.window_s), 1)
    side.p50_ms = round(float(np.percentile(ms, 50)), 3)
    side.p99_ms = round(float(np.percentile(ms, 99)), 3)
    side.mean_ms = round(float(ms.mean()), 3)
    done = side.requests + side.errors
    used = {pid: max(0.0, cpu1[pid] - cpu0[pid]) for pid in pids}
    side.server_cpu_us = round(sum(used.values()) / done * 1e6, 1)
    side.server_process_cores = sorted(
        (round(v / side.window_s, 2) for v in used.values() if v > 0), reverse=True
    )
    side.client_cpu_us = round(sum(r.cpu_s for r in merged) / done * 1e6, 1)
    side.client_max_cores = round(max(r.cpu_s / r.window_s for r in merged if r.window_s), 2)
    ours = sum(used.values()) + sum(r.cpu_s for r in merged)
    side.others_cores = round(max(0.0, busy - ours) / side.window_s, 2)


def stop_all(servers: Sequence[ServerUnderTest]) -> list[int]:
    """SIGTERM each server, wait; SIGKILL any process of their trees still there after."""
    trees = [pid for server in servers for pid in process_tree(server.pid)[1:]]
    codes = [server.stop() for server in servers]
    deadline = time.monotonic() + 10
    for pid in trees:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return codes


@dataclass
class Setup:
    """How trtserve is started: its repository, its arguments, how long it may take."""

    repository: Path
    args: list[str]
    timeout_s: float


def start_trtserve(setup: Setup, workers: int) -> ServerUnderTest:
    """`trtserve serve` (with `--workers N` for N > 1); a clear RuntimeError if it won't start."""
    extra = ["--workers", str(workers)] if workers > 1 else []
    try:
        return start(setup.repository, [*setup.args, *extra], timeout=setup.timeout_s)
    except RuntimeError as e:
        output = str(e).split("\n", 1)[-1].rstrip().splitlines()
        tail = "\n".join(output[-15:]) or "(no output)"
        hint = ""
        if "unrecognized arguments: --workers" in tail:
            hint = " (this trtserve has no --workers option yet)"
        raise RuntimeError(
            f"`trtserve serve {' '.join(extra)}` did not start{hint}; its output ends:\n{tail}"
        ) from None


def start_floors(count: int) -> list[ServerUnderTest]:
    """`count` floor_server.py processes, each on a port of its own."""
    output = f"{OUTPUT_NAME}:FP32:{','.join(str(d) for d in OUTPUT_SHAPE)}"
    floors: list[ServerUnderTest] = []
    try:
        for _ in range(count):
            script = str(HERE / "floor_server.py")
            floors.append(launch([script, "--model", MODEL, "--output", output], "floor"))
    except BaseException:
        stop_all(floors)
        raise
    return floors


def run_side(name: str, workers: int, setup: Setup, args: Any, work: Path) -> Side:
    side = Side(name, workers)
    servers: list[ServerUnderTest] = []
    try:
        if name == "trtserve":
            servers = [start_trtserve(setup, workers)]
            addresses = [servers[0].address] * workers
            side.memory = process_memory(process_tree(servers[0].pid))
        else:
            servers = start_floors(workers)
            addresses = [s.address for s in servers]
        measure(side, addresses, servers, args, work)
    except Exception as e:  # one side failing must not lose the others
        side.note = f"{type(e).__name__}: {e}"[:3000]
    finally:
        side.server_exit = stop_all(servers)
    return side


# --- models ----------------------------------------------------------------------------------


def cpu_setup(work: Path) -> Setup:
    """shm_bench.py's ONNX copy model and config in a repository."""
    from shm_bench import build_cpu_model, cpu_config

    repository = work / "repository"
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "config.pbtxt").write_text(cpu_config())
    (repository / MODEL / "1" / "model.onnx").write_bytes(build_cpu_model())
    return Setup(repository, ["--log-level", "WARNING"], 120.0)


def gpu_setup(work: Path, plans: Path, runtimes_dir: Path) -> Setup:
    """The plan in a repository (multi_gpu_bench.py's helper), gpu_bench.py's server arguments:
    the lean runtimes preloaded."""
    import gpu_bench
    import multi_gpu_bench

    repository = work / "repository"
    multi_gpu_bench.write_repository(
        repository, (plans / gpu_bench.PLAN_NAME).resolve(), {MODEL: ((0,), INSTANCES)}
    )
    args = ["--log-level", "WARNING", "--runtimes-dir", str(runtimes_dir.resolve())]
    for version in gpu_bench.lean_libraries(runtimes_dir.resolve()):
        args += ["--preload-runtimes", version]
    return Setup(repository, args, 300.0)


# --- report ----------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if a and b else None


def fill_ratios(points: list[dict[str, Any]]) -> None:
    """trtserve over the floors' sum, and over trtserve with one worker, per point."""
    one = next((p["trtserve"]["per_s"] for p in points if p["workers"] == 1), 0.0)
    for point in points:
        ours = point["trtserve"]["per_s"]
        point["trtserve_over_floor_sum"] = ratio(ours, point["floor"]["per_s"])
        point["trtserve_over_one_worker"] = ratio(ours, one)


def output_checks(points: Sequence[dict[str, Any]], cpu: bool) -> dict[str, Any]:
    """Every trtserve output bit-equal to the first point's; shapes and sizes as they must be."""
    checks: dict[str, Any] = {}
    first: list[str] | None = None
    equal = True
    for point in points:
        for name in ("trtserve", "floor"):
            got = point[name]["checks"]
            if not got:
                continue
            for key in ("output_shape_ok", "output_bytes_ok", "output_equals_numpy"):
                if key in got:
                    checks[f"{name}_{key}"] = checks.get(f"{name}_{key}", True) and got[key]
            if name == "trtserve":
                digests = got.get("output_sha256", [])
                first = digests if first is None else first
                equal &= len(digests) == 1 and digests == first
                checks[f"trtserve_N{point['workers']}_sha256"] = digests
    if first is not None:
        checks["trtserve_outputs_bit_equal_across_N"] = equal
    if cpu and "trtserve_output_equals_numpy" not in checks and first is not None:
        checks["trtserve_output_equals_numpy"] = False
    return checks


def _x(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "n/a"
    mark = "" if target is None else (" (ok)" if value >= target else " (below)")
    return f"{value:.2f}x{mark}"


def _rate(side: dict[str, Any]) -> str:
    return f"{side['per_s']:,.1f}" if side["requests"] else "failed"


def _ms(side: dict[str, Any], key: str) -> str:
    return f"{side[key]:.2f}" if side["requests"] else "-"


def _cpu(side: dict[str, Any]) -> str:
    return f"{side['server_cpu_us']:,.0f}" if side["server_cpu_us"] is not None else "-"


def markdown(report: dict[str, Any]) -> str:
    c, ch = report["concurrency_per_process"], report["channels_per_process"]
    lines = [
        f"Workers benchmark, {report['model']} ({report['device']}, {report['date']})",
        "",
        f"Targets: trtserve >= {FLOOR_TARGET}x the floors' sum at each N; >= {SCALE_TARGET:g}x "
        f"trtserve with one worker at N={SCALE_AT}.",
        "",
        f"`trtserve serve --workers N{''.join(' ' + a for a in report.get('serve_args', []))}` "
        "(one gRPC port, SO_REUSEPORT) against N floor_server.py "
        f"processes (a port each, a prebuilt 3.2 MB reply); each side driven by N load processes "
        f"(tritonclient.grpc.aio, closed loop, concurrency {c} each over {ch} connection(s), "
        f"tensors inline in the messages); {report['warmup_s']} s warm-up, {report['seconds']} s "
        f"window per side. Machine: {report['machine']}.",
        "",
        "| N | trtserve req/s | floors' sum req/s | trtserve / floors' sum "
        f"(>= {FLOOR_TARGET}x) | trtserve / N=1 (>= {SCALE_TARGET:g}x at N={SCALE_AT}) "
        "| p50 ms | p99 ms | floor p50 ms | floor p99 ms | errors trtserve / floors "
        "| server CPU µs/req trtserve / floors | connections per worker |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in report["points"]:
        t, f = p["trtserve"], p["floor"]

        errors = f"{t['errors']} / {f['errors']}"
        if t["errors"] or f["errors"]:
            errors = f"**{errors}**"
        scale_target = SCALE_TARGET if p["workers"] == SCALE_AT else None
        lines.append(
            f"| {p['workers']} | {_rate(t)} | {_rate(f)} | "
            f"{_x(p['trtserve_over_floor_sum'], FLOOR_TARGET)} | "
            f"{_x(p['trtserve_over_one_worker'], scale_target)} | {_ms(t, 'p50_ms')} | "
            f"{_ms(t, 'p99_ms')} | {_ms(f, 'p50_ms')} | {_ms(f, 'p99_ms')} | {errors} | "
            f"{_cpu(t)} / {_cpu(f)} | {'/'.join(map(str, t['connections'])) or '-'} |"
        )
    lines += [
        "",
        f"- Host: {report['cpu_count']} CPUs ({report['cpus_usable']} usable by these "
        "processes). The load generators share these cores with the servers: at N, N load "
        "processes and N workers (or N floors) run on them at once, nothing pinned, so on a host "
        "with fewer than 2N free cores the numbers are bounded by the cores, not by the servers.",
    ]
    for p in report["points"]:
        parts = []
        for name in p["order"]:
            side = p[name]
            if not side["requests"]:
                parts.append(f"{TITLES[name]}: no requests measured (see below)")
                continue
            parts.append(
                f"{TITLES[name]}: server processes {side['server_process_cores']} cores, "
                f"busiest load process {side['client_max_cores']} cores, load "
                f"{side['client_cpu_us']:,.0f} µs/req, other processes {side['others_cores']} "
                "cores"
            )
        lines.append(f"- N={p['workers']}, in this order: " + "; ".join(parts) + ".")
    for p in report["points"]:
        memory = p["trtserve"].get("memory") or {}
        if memory:
            each = ", ".join(f"{m['rss_mib']:,.0f} / {m['gpu_mib']:,.0f}" for m in memory.values())
            lines.append(
                f"- N={p['workers']} memory per trtserve process (supervisor first), resident / "
                f"GPU MiB: {each}."
            )
    lines.append(f"- checks: {json.dumps(report['checks'])}")
    for p in report["points"]:
        for name in ("trtserve", "floor"):
            side = p[name]
            if side["errors"] or side["warmup_errors"]:
                lines.append(
                    f"- errors, N={p['workers']} {TITLES[name]}: {side['errors']} in the window, "
                    f"{side['warmup_errors']} in warm-up: {side['error_messages']}"
                )
    for note in report["notes"]:
        head, _, rest = note.partition("\n")
        lines.append(f"- {head}")
        if rest:
            lines += ["", "  ```", *(f"  {line}" for line in rest.splitlines()), "  ```"]
    return "\n".join(lines) + "\n"


def workers_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of worker counts >= 1")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the ONNX copy model, no GPU needed")
    parser.add_argument("--runtimes-dir", type=Path, help="lean runtimes (<dir>/<version>/...)")
    parser.add_argument("--plans", type=Path, help="folder holding the conv plan (GPU)")
    parser.add_argument("--out", type=Path, help="JSON results file (a .md goes beside it)")
    parser.add_argument(
        "--workers-list", type=workers_list, default=list(WORKERS), help="worker counts (1,2,4,8)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="window per side (10)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="warm-up per side (2)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight per load process (8)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=0,
        help="connections per load process (0, the default: one per request in flight)",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `trtserve serve` argument (repeatable), e.g. --serve-arg=--gpu-wait=block",
    )
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(LoadSpec(**json.loads(args.child)))
    if args.out is None:
        parser.error("--out is required")
    if args.concurrency < 1 or args.channels < 0:
        parser.error("--concurrency must be >= 1 and --channels >= 0")
    if not args.cpu and (args.runtimes_dir is None or args.plans is None):
        parser.error("--runtimes-dir and --plans are required on a GPU (or --cpu)")
    if not args.cpu:
        from shm_bench import cuda_devices

        if cuda_devices() == 0:
            parser.error("no CUDA device is visible: run with --cpu")
    from shm_bench import machine

    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_shares_cores_with_servers": True,
        "seconds": args.seconds,
        "warmup_s": args.warmup_s,
        "workers_list": args.workers_list,
        "concurrency_per_process": args.concurrency,
        "channels_per_process": args.channels or args.concurrency,
        "instances_per_worker": INSTANCES,
        "serve_args": args.serve_arg,
        "notes": [],
    }
    notes: list[str] = report["notes"]
    work = Path(tempfile.mkdtemp(prefix="trtserve-workers-bench-"))
    points: list[dict[str, Any]] = []
    try:
        if args.cpu:
            report["model"] = (
                "ONNX Slice+Gather copy, 1x3x224x224 FP32 in (0.6 MB), 1x16x222x222 FP32 out "
                f"(3.2 MB), {INSTANCES} CPU instances per worker, intra_op_threads 1"
            )
            report["device"] = "CPU only"
            setup = cpu_setup(work)
        else:
            import gpu_bench

            report["model"] = f"{gpu_bench.PLAN_NAME}, {INSTANCES} GPU instances per worker"
            report["device"] = gpu_bench.gpu_name()
            setup = gpu_setup(work, args.plans, args.runtimes_dir)
        setup.args += args.serve_arg
        for index, workers in enumerate(args.workers_list):
            order = ["trtserve", "floor"] if index % 2 == 0 else ["floor", "trtserve"]
            sides = {name: run_side(name, workers, setup, args, work) for name in order}
            points.append(
                {"workers": workers, "order": order, **{k: asdict(v) for k, v in sides.items()}}
            )
            for name in order:
                s = sides[name]
                measured = (
                    f"{s.per_s:,.1f} req/s, p50 {s.p50_ms} ms, p99 {s.p99_ms} ms, errors {s.errors}"
                )
                print(f"N={workers} {name}: {s.note or measured}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fill_ratios(points)
    report["points"] = points
    report["checks"] = output_checks(points, args.cpu)
    failed = [
        f"N={p['workers']} {name}: {p[name]['note']}"
        for p in points
        for name in ("trtserve", "floor")
        if p[name]["note"]
    ]
    failed += [f"check failed: {k}" for k, v in report["checks"].items() if v is False]
    failed += [
        f"N={p['workers']} {name}: {p[name]['errors']} errors in the window"
        for p in points
        for name in ("trtserve", "floor")
        if p[name]["errors"]
    ]
    cores = report["cpus_usable"]
    notes += [
        f"N={p['workers']} {TITLES[name]}: other processes took {p[name]['others_cores']} of "
        f"the {cores} cores during the window: the machine was shared, the numbers are noisy"
        for p in points
        for name in p["order"]
        if (p[name]["others_cores"] or 0.0) > 0.1 * cores
    ]
    notes += [f"FAILED {line}" for line in failed]
    write_report(args.out, report, markdown(report))
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
