"""The one-by-one path: a model without dynamic batching against the protocol floor.

    python benchmarks/one_by_one.py [--repeats 5] [--duration 4] [--out results/one_by_one.md]

The built-in add/sub model (`simple`, 2x[1,16] FP32) served with `max_batch_size: 8` and no
`dynamic_batching`, so requests run one by one, as models moved over from Triton as they are
do. Two servers side by side with the floor (floor_server.py, a bare grpc.aio server answering
the same messages), in one run: trtserve as configured (short executions run on the event loop,
`--max-inline-execution-us` 1000) and trtserve with every execution on the instance threads
(`--max-inline-execution-us 0`, the path before). Concurrency 1, 8 and 32, each measurement
repeated and the median reported, the order of the three rotated every repetition. The load
generator is load.py (its own process; see run.py for how runs are taken and retried).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    HERE,
    TINY_INPUTS,
    TINY_MODEL,
    TINY_OUTPUTS,
    Plan,
    Row,
    machine_lines,
    measure,
)
from server_under_test import ServerUnderTest, launch, start

from trtserve.server.default_model import SIMPLE_CONFIG, build_simple_model

CONCURRENCY = (1, 8, 32)


def serial_config() -> str:
    """The built-in `simple` config without dynamic batching."""
    kept = [line for line in SIMPLE_CONFIG.splitlines() if "dynamic_batching" not in line]
    if len(kept) == len(SIMPLE_CONFIG.splitlines()):
        raise RuntimeError("the built-in `simple` config has no dynamic_batching line to drop")
    return "\n".join(kept) + "\n"


def write_repository(root: Path) -> None:
    (root / TINY_MODEL / "1").mkdir(parents=True)
    (root / TINY_MODEL / "config.pbtxt").write_text(serial_config())
    (root / TINY_MODEL / "1" / "model.onnx").write_bytes(build_simple_model())


def markdown(
    rows: dict[str, dict[int, Row]], command: str, plan: Plan, seconds: float
) -> list[str]:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` "
        f"({plan.repeats} repetitions of {plan.duration_s:g} s after {plan.warmup_s:g} s of "
        f"warm-up, medians; {seconds:.0f} s in all).",
        "",
        *machine_lines(),
        "",
        "| c | server | req/s median (min-max) | vs floor | p50 ms | p99 ms | p99 vs floor "
        "| server CPU µs/req (event loop) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        floor = rows["floor"][c]
        for label, by_c in rows.items():
            row = by_c[c]
            values = [r.throughput for r in row.runs]
            p99 = row.median(lambda r: r.p99_ms)
            floor_p99 = floor.median(lambda r: r.p99_ms)
            lines.append(
                f"| {c} | {label} | {row.throughput:,.0f} ({min(values):,.0f}-"
                f"{max(values):,.0f}) | {row.throughput / floor.throughput:.2f}x "
                f"| {row.median(lambda r: r.p50_ms):.2f} | {p99:.2f} | {p99 / floor_p99:.2f}x "
                f"| {row.per_request_us(lambda r: r.server_cpu_s):.0f} "
                f"({row.per_request_us(lambda r: r.server_loop_cpu_s):.0f}) |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per cell (5)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per window (4)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    plan = Plan(args.repeats, args.duration, 1.0)
    command = "python benchmarks/one_by_one.py" + (
        f" --repeats {args.repeats}" if args.repeats != 5 else ""
    )
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    servers: list[ServerUnderTest] = []
    with tempfile.TemporaryDirectory(prefix="trtserve-one-by-one-") as tmp:
        repository = Path(tmp) / "models"
        write_repository(repository)
        try:
            targets = {
                "floor": launch(
                    [
                        str(HERE / "floor_server.py"),
                        "--model",
                        TINY_MODEL,
                        *[a for t in TINY_OUTPUTS for a in ("--output", str(t))],
                    ],
                    "floor",
                ),
                "trtserve": start(repository, ["--log-level", "WARNING"]),
                "trtserve, threads only": start(
                    repository, ["--log-level", "WARNING", "--max-inline-execution-us", "0"]
                ),
            }
            servers.extend(targets.values())
            rows = {label: {c: Row(f"{label}, c={c}") for c in CONCURRENCY} for label in targets}
            order = list(targets)
            for repeat in range(plan.repeats):
                for c in CONCURRENCY:
                    shift = (repeat + c) % len(order)
                    for label in order[shift:] + order[:shift]:
                        measure(
                            targets[label],
                            TINY_MODEL,
                            TINY_INPUTS,
                            c,
                            plan,
                            rows[label][c],
                            False,
                            log,
                            f"[{repeat + 1}/{plan.repeats}]",
                        )
        finally:
            for server in servers:
                server.stop()
    lines = markdown(rows, command, plan, time.perf_counter() - started)
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
