"""Run every benchmark side by side and write the results to docs/benchmarks.md.

    python benchmarks/run.py [--quick] [--out docs/benchmarks.md] [--profile DIR]

(a) The tiny `simple` model (1x16 FP32) on `trtserve serve` against the protocol floor
    (floor_server.py) at concurrency 1, 8 and 32.
(b) A dense, memory-bound model at concurrency 64 with dynamic batching on and off.

Each server and each load generator (load.py) runs in its own process; every measurement is
repeated and the median reported. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import LoadResult, machine_cpu_s
from server_under_test import ServerUnderTest, launch, start
from tensor_arg import TensorArg

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.default_model import (
    SIMPLE_CONFIG,
    build_dense_model,
    build_simple_model,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TINY_MODEL = "simple"
TINY_INPUTS = (TensorArg("INPUT0", "FP32", (1, 16)), TensorArg("INPUT1", "FP32", (1, 16)))
TINY_OUTPUTS = (TensorArg("OUTPUT0", "FP32", (1, 16)), TensorArg("OUTPUT1", "FP32", (1, 16)))
TINY_CONCURRENCY = (1, 8, 32)

DENSE_WIDTH = 2048
DENSE_LAYERS = 4
DENSE_CONCURRENCY = 64
DENSE_INSTANCES = 1
DENSE_QUEUE_DELAY_US = 2000
DENSE_ON = "dense_batching"
DENSE_OFF = "dense_one_by_one"
DENSE_INPUTS = (TensorArg("x", "FP32", (1, DENSE_WIDTH)),)


def _simple_setting(pattern: str) -> int:
    match = re.search(pattern, SIMPLE_CONFIG)
    if match is None:
        raise RuntimeError(f"built-in `simple` config: expected a match for {pattern!r}")
    return int(match.group(1))


SIMPLE_QUEUE_DELAY_US = _simple_setting(r"max_queue_delay_microseconds: (\d+)")
SIMPLE_INSTANCES = _simple_setting(r"count: (\d+)")
SIMPLE_MAX_BATCH = _simple_setting(r"max_batch_size: (\d+)")
TARGET_FLOOR_RATIO = 0.7
TARGET_BATCHING_RATIO = 3.0


def dense_config(name: str, batching: bool) -> str:
    """A dense model config; batching off means max_batch_size 0, one request per execution."""
    if batching:
        head = (
            f"max_batch_size: {DENSE_CONCURRENCY}\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {DENSE_QUEUE_DELAY_US} "
            f"preferred_batch_size: [ {DENSE_CONCURRENCY} ] }}\n"
        )
        dims = f"[ {DENSE_WIDTH} ]"
    else:
        head = "max_batch_size: 0\n"
        dims = f"[ 1, {DENSE_WIDTH} ]"
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\n{head}'
        f'input [ {{ name: "x", data_type: TYPE_FP32, dims: {dims} }} ]\n'
        f'output [ {{ name: "y", data_type: TYPE_FP32, dims: {dims} }} ]\n'
        f"instance_group [ {{ count: {DENSE_INSTANCES}, kind: KIND_CPU }} ]\n"
        'parameters { key: "intra_op_threads" value: { string_value: "1" } }\n'
    )


def write_repository(root: Path) -> None:
    """The benchmark models in Triton's layout: <model>/config.pbtxt and <model>/1/model.onnx."""
    dense = build_dense_model(DENSE_WIDTH, DENSE_LAYERS)
    models = {
        TINY_MODEL: (SIMPLE_CONFIG, build_simple_model()),
        DENSE_ON: (dense_config(DENSE_ON, True), dense),
        DENSE_OFF: (dense_config(DENSE_OFF, False), dense),
    }
    for name, (config, onnx_bytes) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.onnx").write_bytes(onnx_bytes)


def run_load(
    server: ServerUnderTest,
    model: str,
    inputs: Sequence[TensorArg],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> LoadResult:
    """One measurement: load.py in its own process against `server`."""
    args = [
        sys.executable,
        str(HERE / "load.py"),
        "--target",
        server.address,
        "--model",
        model,
        *[a for t in inputs for a in ("--input", str(t))],
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
        "--server-pid",
        str(server.pid),
    ]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"load.py failed ({done.returncode}):\n{done.stderr}")
    return LoadResult.from_json(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class ModelCounts:
    """A model's cumulative counters from ModelStatistics."""

    inferences: int = 0
    executions: int = 0
    requests: int = 0
    request_ns: int = 0
    queue_ns: int = 0
    # Time the instances spent executing batches (input, infer and output), summed.
    compute_ns: int = 0
    # Wall-clock time when the counters were read.
    read_ns: int = 0

    def __sub__(self, other: ModelCounts) -> ModelCounts:
        return ModelCounts(
            self.inferences - other.inferences,
            self.executions - other.executions,
            self.requests - other.requests,
            self.request_ns - other.request_ns,
            self.queue_ns - other.queue_ns,
            self.compute_ns - other.compute_ns,
            self.read_ns - other.read_ns,
        )

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else float("nan")

    @property
    def queue_us(self) -> float:
        """Mean time a request waited in the server's queue."""
        return self.queue_ns / self.requests / 1e3 if self.requests else float("nan")

    def instances_busy(self, instances: int) -> float:
        """Share of the time between two reads the model's instances spent executing."""
        return self.compute_ns / (self.read_ns * instances) if self.read_ns else float("nan")


def model_counts(address: str, model: str) -> ModelCounts:
    """A model's counters from ModelStatistics (zeros before its first request)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    now = time.perf_counter_ns()
    for s in reply.model_stats:
        compute = sum(
            b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns for b in s.batch_stats
        )
        return ModelCounts(
            int(s.inference_count),
            int(s.execution_count),
            int(s.inference_stats.success.count),
            int(s.inference_stats.success.ns),
            int(s.inference_stats.queue.ns),
            int(compute),
            now,
        )
    return ModelCounts(read_ns=now)


@dataclass
class Row:
    """The repeated measurements of one configuration."""

    label: str
    # Instances of the model (0 for the floor, which has none).
    instances: int = 0
    runs: list[LoadResult] = field(default_factory=list)
    counts: list[ModelCounts] = field(default_factory=list)

    def median(self, get: Callable[[LoadResult], float | None]) -> float:
        values = [v for r in self.runs if (v := get(r)) is not None]
        return statistics.median(values) if values else float("nan")

    def median_counts(self, get: Callable[[ModelCounts], float]) -> float:
        return statistics.median(get(c) for c in self.counts) if self.counts else float("nan")

    @property
    def throughput(self) -> float:
        return self.median(lambda r: r.throughput)

    def per_request_us(self, get: Callable[[LoadResult], float | None]) -> float:
        return self.median(
            lambda r: None if (v := get(r)) is None or not r.count else v / r.count * 1e6
        )

    def busy(self, get: Callable[[LoadResult], float | None], cores: int = 1) -> float:
        """Median share of `cores` that `get`'s CPU seconds kept busy over the window."""
        return self.median(lambda r: None if (v := get(r)) is None else v / (r.elapsed_s * cores))

    def machine_busy(self) -> float:
        """Share of the machine's cores the server and the load generator kept busy."""
        return self.busy(lambda r: r.client_cpu_s + (r.server_cpu_s or 0.0), os.cpu_count() or 1)

    def others_busy(self) -> float:
        """Median share of the machine's cores that other processes kept busy."""
        return self.median(others_share)

    def errors(self) -> int:
        return sum(sum(r.errors.values()) for r in self.runs)


def _spread(row: Row) -> str:
    values = [r.throughput for r in row.runs]
    if len(values) < 2:
        return ""
    return f" ({min(values):,.0f}-{max(values):,.0f})"


def _num(value: float, spec: str) -> str:
    return "n/a" if value != value else format(value, spec)  # NaN: not measured


def table_row(row: Row, extra: Sequence[str]) -> str:
    cells = [
        row.label,
        f"{row.throughput:,.0f}{_spread(row)}",
        f"{row.median(lambda r: r.p50_ms):.2f}",
        f"{row.median(lambda r: r.p99_ms):.2f}",
        f"{row.per_request_us(lambda r: r.server_cpu_s):.0f} "
        f"({row.per_request_us(lambda r: r.server_loop_cpu_s):.0f})",
        f"{row.per_request_us(lambda r: r.client_cpu_s):.0f}",
        f"{row.machine_busy() * 100:.0f}%",
        f"{max(row.others_busy(), 0.0) * 100:.0f}%",
        _num(row.median_counts(lambda c: c.mean_batch), ".2f"),
        _num(row.median_counts(lambda c: c.queue_us), ".0f"),
        _num(row.median_counts(lambda c: c.instances_busy(row.instances)) * 100, ".0f")
        + ("%" if row.counts else ""),
        *extra,
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = (
    "| configuration | req/s median (min-max) | p50 ms | p99 ms "
    "| server CPU µs/req (event-loop thread) | load-gen CPU µs/req | CPU busy | others' CPU "
    "| mean batch | queue µs/req | instances busy |"
)
TABLE_RULE = "|---" * 11 + "|"


def measure_dense_alone(width: int, layers: int) -> dict[int, float]:
    """ms per sample of the dense model run by ONNX Runtime in this process (1 thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        build_dense_model(width, layers), options, providers=["CPUExecutionProvider"]
    )
    per_sample: dict[int, float] = {}
    for batch in (1, DENSE_CONCURRENCY):
        x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
        for _ in range(3):
            session.run(None, {"x": x})
        runs = max(5, 200 // batch)
        started = time.perf_counter()
        for _ in range(runs):
            session.run(None, {"x": x})
        per_sample[batch] = (time.perf_counter() - started) / runs / batch * 1e3
    return per_sample


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- Date: {now}",
        f"- CPU: {cpu}, {os.cpu_count()} cores visible to the processes",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, grpcio {package_version('grpcio')}, "
        f"protobuf {package_version('protobuf')}, onnxruntime {package_version('onnxruntime')}, "
        f"numpy {package_version('numpy')}, trtserve {package_version('trtserve')}",
    ]


@dataclass
class Plan:
    """How long and how often to measure."""

    repeats: int
    duration_s: float
    warmup_s: float
    # What is left of the time to spend waiting for a quiet machine before measurements.
    quiet_wait_s: float = 0.0
    # Measurements taken again because other processes took CPU during them.
    retried: int = 0
    # The whole quiet-wait budget, for the record.
    quiet_budget_s: float = 0.0


QUIET_SHARE = 0.15
PERTURBED_SHARE = 0.10
MAX_RETRIES = 2
# Retakes in a whole run, so a busy machine cannot stretch it much past five minutes.
MAX_TOTAL_RETRIES = 8


def others_share(result: LoadResult) -> float:
    """Share of the machine's cores that processes other than the measured two kept busy."""
    others = result.machine_cpu_s - result.client_cpu_s - (result.server_cpu_s or 0.0)
    return others / (result.elapsed_s * (os.cpu_count() or 1))


def wait_for_quiet(max_wait_s: float, log: Callable[[str], None]) -> None:
    """Wait (at most `max_wait_s`) until the machine's cores were mostly idle for 0.5 s.

    Other jobs on a shared machine take the CPU the measured processes need; waiting them out
    is cheaper than a perturbed number.
    """
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait_s
    waited = False
    while True:
        before = machine_cpu_s()
        time.sleep(0.5)
        share = (machine_cpu_s() - before) / (0.5 * cores)
        if share < QUIET_SHARE or time.monotonic() >= deadline:
            break
        if not waited:
            log(f"  waiting for the machine to quieten (others use {share:.0%} of its cores)")
            waited = True


def measure(
    server: ServerUnderTest,
    model: str,
    inputs: Sequence[TensorArg],
    concurrency: int,
    plan: Plan,
    row: Row,
    counted: bool,
    log: Callable[[str], None],
    progress: str,
) -> None:
    """One load run into `row`, with the model's statistics over it when `counted`.

    A run during which other processes took more than PERTURBED_SHARE of the cores is
    measured again, up to MAX_RETRIES times (MAX_TOTAL_RETRIES in a whole run), while the
    quiet-wait budget lasts.
    """
    for attempt in range(MAX_RETRIES + 1):
        if plan.quiet_wait_s > 0:
            started = time.monotonic()
            wait_for_quiet(plan.quiet_wait_s, log)
            plan.quiet_wait_s -= time.monotonic() - started
        before = model_counts(server.address, model) if counted else None
        result = run_load(server, model, inputs, concurrency, plan.duration_s, plan.warmup_s)
        counts = model_counts(server.address, model) - before if before is not None else None
        others = others_share(result)
        last = attempt == MAX_RETRIES or plan.retried >= MAX_TOTAL_RETRIES
        if others <= PERTURBED_SHARE or last or plan.quiet_wait_s <= 0:
            break
        plan.retried += 1
        log(f"  {progress} {row.label}: others took {others:.0%} of the cores; measuring again")
    if counts is not None:
        row.counts.append(counts)
    row.runs.append(result)
    log(f"  {progress} {row.label}: {result.throughput:,.0f} req/s, p50 {result.p50_ms:.2f} ms")


@dataclass
class TinyRows:
    """Floor and trtserve at one concurrency."""

    concurrency: int
    floor: Row
    ours: Row

    @property
    def ratio(self) -> float:
        return self.ours.throughput / self.floor.throughput


def run_tiny(
    ours: ServerUnderTest, floor: ServerUnderTest, plan: Plan, log: Callable[[str], None]
) -> list[TinyRows]:
    rows = [
        TinyRows(c, Row(f"floor, c={c}"), Row(f"trtserve, c={c}", SIMPLE_INSTANCES))
        for c in TINY_CONCURRENCY
    ]
    for repeat in range(plan.repeats):
        for tiny in rows:
            # Alternate which server goes first so slow drift does not favour one.
            pairs = [(floor, tiny.floor, False), (ours, tiny.ours, True)]
            for server, row, counted in pairs if repeat % 2 == 0 else reversed(pairs):
                measure(
                    server,
                    TINY_MODEL,
                    TINY_INPUTS,
                    tiny.concurrency,
                    plan,
                    row,
                    counted,
                    log,
                    f"[{repeat + 1}/{plan.repeats}]",
                )
    return rows


def run_dense(ours: ServerUnderTest, plan: Plan, log: Callable[[str], None]) -> tuple[Row, Row]:
    on = Row(f"batching on, c={DENSE_CONCURRENCY}", DENSE_INSTANCES)
    off = Row(f"batching off, c={DENSE_CONCURRENCY}", DENSE_INSTANCES)
    for repeat in range(plan.repeats):
        pairs = [(DENSE_ON, on), (DENSE_OFF, off)]
        for model, row in pairs if repeat % 2 == 0 else reversed(pairs):
            measure(
                ours,
                model,
                DENSE_INPUTS,
                DENSE_CONCURRENCY,
                plan,
                row,
                True,
                log,
                f"[{repeat + 1}/{plan.repeats}]",
            )
    return on, off


def profile_server(
    server: ServerUnderTest,
    model: str,
    inputs: Sequence[TensorArg],
    concurrency: int,
    out: Path,
    plan: Plan,
) -> None:
    """py-spy (all Python threads, raw collapsed stacks) on the server while load.py runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = plan.warmup_s + plan.duration_s
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(int(seconds) + 1),
            "--rate",
            "200",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    run_load(server, model, inputs, concurrency, plan.duration_s, plan.warmup_s)
    spy.wait(60)


SATURATED_SHARE = 0.85


def tiny_notes(rows: list[TinyRows]) -> list[str]:
    """What bounds the tiny-model numbers, from what this run measured."""
    cores = os.cpu_count() or 1
    top = rows[-1]
    first = rows[0]
    floor_busy = top.floor.machine_busy()
    floor_cpu = (
        f"{top.floor.per_request_us(lambda r: r.server_cpu_s):.0f} µs of server CPU and "
        f"{top.floor.per_request_us(lambda r: r.client_cpu_s):.0f} µs of load-generator CPU "
        "per request"
    )
    if floor_busy >= SATURATED_SHARE:
        floor_line = (
            f"- **Floor, c={top.concurrency}**: the two processes kept {floor_busy:.0%} of the "
            f"{cores} cores busy ({floor_cpu}): the floor is bounded by the CPU the two sides "
            "share, and would be higher with the load generator on another machine."
        )
    else:
        floor_line = (
            f"- **Floor, c={top.concurrency}**: the two processes kept only {floor_busy:.0%} of "
            f"the {cores} cores busy ({floor_cpu}) while other processes took "
            f"{top.floor.others_busy():.0%}: this number is below what the machine gives."
        )
    ours_loop = top.ours.per_request_us(lambda r: r.server_loop_cpu_s)
    batch = top.ours.median_counts(lambda c: c.mean_batch)
    lines = [
        floor_line,
        f"- **trtserve, c={top.concurrency}**: its event-loop thread spent {ours_loop:.0f} µs "
        f"per request against the floor's "
        f"{top.floor.per_request_us(lambda r: r.server_loop_cpu_s):.0f} µs, and was busy "
        f"{top.ours.busy(lambda r: r.server_loop_cpu_s):.0%} of the window, while the model's "
        f"instances were busy "
        f"{top.ours.median_counts(lambda c: c.instances_busy(SIMPLE_INSTANCES)):.0%}. grpc.aio "
        "handles every call on that thread, and the servicer decodes, queues and encodes "
        "there; waiting for a batch, packing, executing and splitting happen on the instance "
        "threads, which need the same GIL for their Python. That serial, GIL-holding work per "
        "request bounds the throughput, not the model.",
        f"- **Mean batch {batch:.2f} at c={top.concurrency}**: the per-batch work (waking an "
        "instance thread, packing, running, handing the outputs back to the loop) is shared by "
        "that many requests; the client's latency "
        f"(p50 {top.ours.median(lambda r: r.p50_ms):.1f} ms) is mostly spent outside the queue "
        f"({top.ours.median_counts(lambda c: c.queue_us):.0f} µs in it).",
    ]
    queue_us = first.ours.median_counts(lambda c: c.queue_us)
    if queue_us == queue_us and queue_us > 2 * SIMPLE_QUEUE_DELAY_US:
        lines.append(
            f"- **c={first.concurrency}** is latency-bound: one request in flight. Each one "
            f"waited {queue_us:.0f} µs in the queue although max_queue_delay is "
            f"{SIMPLE_QUEUE_DELAY_US} µs and a lone request does not wait for company: the "
            "instance thread took that long to wake and get the interpreter lock."
        )
    return lines


def dense_notes(on: Row, off: Row, alone: dict[int, float]) -> list[str]:
    """What bounds the dense-model numbers."""

    def execution_ms(row: Row) -> float:
        return row.median_counts(lambda c: c.compute_ns / c.executions / 1e6)

    def busy(row: Row) -> float:
        return row.median_counts(lambda c: c.instances_busy(DENSE_INSTANCES))

    batch = on.median_counts(lambda c: c.mean_batch)
    return [
        f"- **Off** runs every request as one execution, {execution_ms(off):.2f} ms each in "
        f"the server ({alone[1]:.2f} ms when run alone in `run.py`'s process). The instance "
        f"was busy {busy(off):.0%} of the time although requests were always queued: after "
        "each execution it waits for the event loop to take the result and hand it the next "
        "request.",
        f"- **On** executed batches of {batch:.1f} requests on average, "
        f"{execution_ms(on):.1f} ms each ({execution_ms(on) / batch:.3f} ms per request; "
        f"{alone[DENSE_CONCURRENCY]:.3f} ms per request alone at batch {DENSE_CONCURRENCY}); "
        f"the instance was busy {busy(on):.0%} of the time. The rest of the time it waits for "
        "the event loop to hand it the next batch, and for that batch to gather (up to the "
        f"{DENSE_QUEUE_DELAY_US} µs max_queue_delay when fewer than {DENSE_CONCURRENCY} "
        "requests are queued).",
    ]


def others_line(tiny: list[TinyRows], dense: tuple[Row, Row], plan: Plan) -> str:
    """How much CPU other processes took during the measurements."""
    rows = [r for t in tiny for r in (t.floor, t.ours)] + list(dense)
    runs = [r for row in rows for r in row.runs]
    perturbed = sum(others_share(r) > PERTURBED_SHARE for r in runs)
    line = (
        "- Other processes on the machine: before each measurement the run waits for the cores "
        f"to be idle (up to {plan.quiet_budget_s:g} s in all), and measures again (up to "
        f"{MAX_RETRIES} times each, {MAX_TOTAL_RETRIES} in all) when others took more than "
        f"{PERTURBED_SHARE:.0%} of the cores "
        f'during a window; {plan.retried} measurement(s) were retaken. The "others\' CPU" '
        "column shows what they took during the kept ones"
    )
    if perturbed:
        return line + (
            f": **{perturbed} of the {len(runs)} kept runs were perturbed** (over "
            f"{PERTURBED_SHARE:.0%}); their rows are less trustworthy."
        )
    return line + "."


def render(
    plan: Plan,
    tiny: list[TinyRows],
    dense: tuple[Row, Row],
    alone: dict[int, float],
    elapsed_s: float,
    command: str,
) -> tuple[str, str]:
    """The results page and a one-line summary."""
    on, off = dense
    ratio_32 = next(t.ratio for t in tiny if t.concurrency == 32)
    batching_ratio = on.throughput / off.throughput
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}`: {plan.repeats} run(s) of {plan.duration_s:g} s per "
        f"configuration after {plan.warmup_s:g} s of warm-up, medians; the whole run took "
        f"{elapsed_s:.0f} s. Do not edit by hand: run it again. How it measures: "
        "[benchmarks/README.md](../benchmarks/README.md).",
        "",
        "## Machine",
        "",
        *machine_lines(),
        "- The server under test and the load generator (`benchmarks/load.py`, grpc.aio, "
        "closed loop) are separate processes **sharing these cores**: every request costs CPU "
        "on both sides, so the numbers are bounded by the sum of the two and are not what a "
        "server would do with the machine to itself.",
        others_line(tiny, dense, plan),
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| trtserve >= {TARGET_FLOOR_RATIO}x the protocol floor, tiny model, concurrency 32 "
        f"| {ratio_32:.2f}x | {'yes' if ratio_32 >= TARGET_FLOOR_RATIO else '**no**'} |",
        f"| batching on >= {TARGET_BATCHING_RATIO:g}x off, dense model, concurrency "
        f"{DENSE_CONCURRENCY} | {batching_ratio:.2f}x | "
        f"{'yes' if batching_ratio >= TARGET_BATCHING_RATIO else '**no**'} |",
        "",
        "Columns: req/s is the median throughput (the range over the runs in brackets); p50 "
        "and p99 are the client's latencies; server CPU is user + system CPU of the server "
        "process per request, all threads (its main thread, which runs the event loop, in "
        "brackets); load-gen CPU is the load generator's; CPU busy is both processes' CPU over "
        "all cores; others' CPU is that of every other process on the machine (anything above "
        "a few % took CPU from the measurement); mean batch (inference_count / "
        "execution_count), queue µs and instances busy (the share of the time the model's "
        "instances spent executing) come from trtserve's ModelStatistics over each run.",
        "",
        "## (a) Protocol overhead: tiny model `simple` (INPUT0, INPUT1 FP32 1x16)",
        "",
        "The floor (`benchmarks/floor_server.py`) is a bare grpc.aio server answering the same "
        "ModelInfer messages with a prebuilt response: no server written on grpc.aio in Python "
        f"can be faster. `simple` is served with its built-in config ({SIMPLE_INSTANCES} CPU "
        f"instances, max_batch_size {SIMPLE_MAX_BATCH}, dynamic batching with a "
        f"{SIMPLE_QUEUE_DELAY_US} µs queue delay).",
        "",
        TABLE_HEAD + " trtserve / floor |",
        TABLE_RULE + "---|",
    ]
    for t in tiny:
        lines.append(table_row(t.floor, [""]))
        lines.append(table_row(t.ours, [f"**{t.ratio:.2f}x**"]))
    lines += ["", *tiny_notes(tiny)]
    lines += [
        "",
        f"## (b) Dynamic batching: dense model (width {DENSE_WIDTH}, {DENSE_LAYERS} "
        f"MatMul+Relu layers, {DENSE_LAYERS * DENSE_WIDTH * DENSE_WIDTH * 4 / 2**20:.0f} MiB of "
        f"FP32 weights), concurrency {DENSE_CONCURRENCY}",
        "",
        f"Both: {DENSE_INSTANCES} CPU instance(s) with intra_op_threads 1, requests of "
        f"1x{DENSE_WIDTH}. On (`{DENSE_ON}`): max_batch_size {DENSE_CONCURRENCY}, "
        f"dynamic_batching with preferred_batch_size [{DENSE_CONCURRENCY}] and "
        f"max_queue_delay {DENSE_QUEUE_DELAY_US} µs. Off (`{DENSE_OFF}`): max_batch_size 0, "
        "one request per execution.",
        "",
        TABLE_HEAD,
        TABLE_RULE,
        table_row(on, []),
        table_row(off, []),
        "",
        f"Batching on / off: **{batching_ratio:.2f}x**. The model alone (ONNX Runtime in "
        f"process, 1 thread) takes {alone[1]:.2f} ms per sample at batch 1 and "
        f"{alone[DENSE_CONCURRENCY]:.3f} ms per sample at batch {DENSE_CONCURRENCY}: "
        f"{alone[1] / alone[DENSE_CONCURRENCY]:.1f}x is the most batching can give on it. At "
        "batch 1 each request reads all the weights, more than the L3 cache holds, for little "
        "arithmetic (memory-bound); a batch reads them once for all its requests.",
        "",
        *dense_notes(on, off, alone),
        "",
        "## (c) TensorRT on a GPU",
        "",
        "Not run by this command (it needs the GPU machine): `scripts/gpu_run.sh` runs "
        "`benchmarks/gpu_bench.py`, which measures the server end to end with tritonclient "
        "against a direct in-process TensorRT run and the pinned-memory copy ceiling. Its "
        "latest table, with the date and device, is in [gpu-results.md](gpu-results.md).",
        "",
    ]
    errors = sum(t.floor.errors() + t.ours.errors() for t in tiny) + on.errors() + off.errors()
    if errors:
        lines += [f"Failed requests across all runs: {errors} (see load.py's JSON).", ""]
    summary = f"trtserve/floor at c=32: {ratio_32:.2f}x; batching on/off: {batching_ratio:.2f}x"
    return "\n".join(lines), summary


# Sections of the page that other scripts measure (pasted by hand from their output): a rewrite
# keeps them, from the heading to the end of the page.
KEPT_SECTIONS = (
    "## One-by-one path (CPU)",
    "## Shared memory (CPU)",
    "## REST against gRPC (CPU)",
)


def kept_sections(page: Path) -> str:
    """The end of `page` from the first kept section's heading on ('' if none)."""
    try:
        text = page.read_text()
    except OSError:
        return ""
    starts = [text.find("\n" + h + "\n") for h in KEPT_SECTIONS if "\n" + h + "\n" in text]
    return "\n" + text[min(starts) + 1 :] if starts else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 run of 2 s per configuration (a smoke test, noisy)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="where to write the results page (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, py-spy the server at c=32 and with batching on into DIR",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait, in all, up to this long for other processes to go idle before measuring "
        "(default 60; 0: never wait)",
    )
    args = parser.parse_args(argv)
    plan = Plan(1, 2.0, 0.5) if args.quick else Plan(3, 4.0, 1.0)
    plan.quiet_wait_s = plan.quiet_budget_s = args.quiet_wait
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    if args.quiet_wait != parser.get_default("quiet_wait"):
        command += f" --quiet-wait {args.quiet_wait:g}"
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    alone = measure_dense_alone(DENSE_WIDTH, DENSE_LAYERS)
    log(
        f"dense model alone: {alone[1]:.2f} ms per sample at batch 1, "
        f"{alone[DENSE_CONCURRENCY]:.3f} at batch {DENSE_CONCURRENCY}"
    )
    with tempfile.TemporaryDirectory(prefix="trtserve-bench-") as tmp:
        repository = Path(tmp) / "models"
        write_repository(repository)
        servers: list[ServerUnderTest] = []
        try:
            ours = start(repository, ["--log-level", "WARNING"])
            servers.append(ours)
            floor = launch(
                [
                    str(HERE / "floor_server.py"),
                    "--model",
                    TINY_MODEL,
                    *[a for t in TINY_OUTPUTS for a in ("--output", str(t))],
                ],
                "floor",
            )
            servers.append(floor)
            log(f"trtserve on {ours.address} (pid {ours.pid}), floor on {floor.address}")
            tiny = run_tiny(ours, floor, plan, log)
            dense = run_dense(ours, plan, log)
            if args.profile:
                for name, model, inputs, c in (
                    ("tiny-c32", TINY_MODEL, TINY_INPUTS, 32),
                    ("dense-batching", DENSE_ON, DENSE_INPUTS, DENSE_CONCURRENCY),
                ):
                    path = args.profile / f"{name}.txt"
                    profile_server(ours, model, inputs, c, path, plan)
                    log(f"py-spy profile of trtserve written to {path}")
        finally:
            for server in reversed(servers):
                server.stop()
    text, summary = render(plan, tiny, dense, alone, time.perf_counter() - started, command)
    text += kept_sections(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"wrote {args.out}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
