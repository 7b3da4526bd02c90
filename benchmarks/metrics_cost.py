"""The metrics' cost per request: µs per record_request + record_execution pair.

Measured in a fresh interpreter per mode, since prometheus-client picks its value store at
import: `single` (one process) and `multiprocess` (PROMETHEUS_MULTIPROC_DIR set and the
request counts kept for a counts file in that folder, as a `serve --workers N` worker keeps
them; the file is written on a clock, not per request, so it is not in the pair's time).

    python benchmarks/metrics_cost.py

Run it with another checkout's interpreter (its venv) to measure that checkout's metrics.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import timeit

MODES = ("single", "multiprocess")


def measure(number: int, repeat: int) -> float:
    """Best µs per pair over `repeat` runs of `number` pairs, in this interpreter."""
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from trtserve.server.metrics import ServerMetrics

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    server = ServerMetrics(CollectorRegistry(), counts_folder=Path(folder) if folder else None)
    metrics = server.version("m", "1")

    def pair() -> None:
        # A request of batch 4 and its batch (two requests): the shapes a dynamic batcher sees.
        metrics.record_request("success", 1_500_000, 200_000, 4)
        metrics.record_execution(4, 2, 10_000, 1_000_000, 20_000)

    pair()  # binds the batch size's series outside the timing
    return min(timeit.repeat(pair, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="pairs per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    parser.add_argument("--mode", choices=MODES, help="measure in this interpreter (internal)")
    args = parser.parse_args()
    if args.mode is not None:
        print(f"{measure(args.number, args.repeat):.2f}")
        return
    for mode in MODES:
        with tempfile.TemporaryDirectory() as files:
            env = dict(os.environ)
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = files
            command = [sys.executable, __file__, "--mode", mode]
            command += ["--number", str(args.number), "--repeat", str(args.repeat)]
            us = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            print(f"{mode:>12}: {us.stdout.strip()} µs per record_request + record_execution")


if __name__ == "__main__":
    main()
