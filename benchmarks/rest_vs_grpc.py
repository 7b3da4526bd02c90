"""REST against gRPC on one trtserve process: the built-in `simple` model at concurrency 1, 8, 32.

One client drives both protocols: Triton's perf_analyzer 2.50 (`-i http` and `-i grpc`, its
defaults otherwise: binary tensor data over HTTP), so what differs is the server's transport.
The two protocols alternate at every concurrency, `--runs` times each; medians. Target: REST at
least 0.6x gRPC's throughput.

    python benchmarks/rest_vs_grpc.py [--runs 3] [--window-ms 2000]

Needs perf_analyzer (`bash scripts/install_perf_analyzer.sh`, or TRTSERVE_PERF_ANALYZER).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from server_under_test import ROOT, start

CONCURRENCIES = (1, 8, 32)
PROTOCOLS = ("grpc", "http")
TARGET = 0.6


def perf_analyzer_binary() -> Path:
    path = Path(os.environ.get("TRTSERVE_PERF_ANALYZER", ROOT / ".perf_analyzer" / "perf_analyzer"))
    if not path.is_file():
        sys.exit(f"{path} missing: run bash scripts/install_perf_analyzer.sh")
    return path


def measure(binary: Path, protocol: str, address: str, concurrency: int, window_ms: int) -> float:
    """perf_analyzer's inferences/s at one concurrency (three stable windows)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.csv"
        done = subprocess.run(
            [
                str(binary),
                "-m",
                "simple",
                "-i",
                protocol,
                "-u",
                address,
                "--concurrency-range",
                str(concurrency),
                "-p",
                str(window_ms),
                "-s",
                "100",
                "-r",
                "3",
                "-f",
                str(report),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer -i {protocol} failed:\n{done.stdout}{done.stderr}")
        [row] = list(csv.DictReader(report.open()))
        return float(row["Inferences/Second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=2000)
    args = parser.parse_args()
    binary = perf_analyzer_binary()
    server = start(None)
    grpc_address = server.address
    http_address = f"{grpc_address.rsplit(':', 1)[0]}:{server.http_port}"
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        for concurrency in CONCURRENCIES:
            for run in range(args.runs):
                # Alternate which protocol goes first, so drift does not favour one.
                order = PROTOCOLS if run % 2 == 0 else PROTOCOLS[::-1]
                for protocol in order:
                    address = grpc_address if protocol == "grpc" else http_address
                    rate = measure(binary, protocol, address, concurrency, args.window_ms)
                    rates.setdefault((protocol, concurrency), []).append(rate)
    finally:
        server.stop()
    print(f"perf_analyzer, built-in `simple` model, {args.runs} runs each, medians (min-max)\n")
    print("| concurrency | gRPC infer/s | REST infer/s | REST / gRPC | target 0.6x |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for concurrency in CONCURRENCIES:
        cells = []
        for protocol in PROTOCOLS:
            values = rates[protocol, concurrency]
            median = statistics.median(values)
            cells.append(f"{median:,.0f} ({min(values):,.0f}-{max(values):,.0f})")
        ratio = statistics.median(rates["http", concurrency]) / statistics.median(
            rates["grpc", concurrency]
        )
        met = "met" if ratio >= TARGET else "**missed**"
        print(f"| {concurrency} | {cells[0]} | {cells[1]} | {ratio:.2f}x | {met} |")


if __name__ == "__main__":
    main()
