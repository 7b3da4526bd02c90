"""Triton's perf_analyzer 2.50, unchanged, against trtserve over gRPC and HTTP: inline and by
system shared memory.

perf_analyzer registers one system shared-memory region per input and output, fills them,
references them in every request and unregisters them at the end; trtserve must serve all of
that as Triton does. The binary comes from scripts/install_perf_analyzer.sh (CI runs it);
elsewhere the test skips without it.
"""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MetricSamples
from server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TRTSERVE_PERF_ANALYZER", ROOT / ".perf_analyzer" / "perf_analyzer"))


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    if not BINARY.is_file():
        message = f"{BINARY} missing: bash scripts/install_perf_analyzer.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return BINARY


def shm_input_bytes(samples: MetricSamples) -> float:
    return samples.value(
        "trtserve_tensor_bytes_total", direction="input", path="system_shared_memory"
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("shared_memory", ["none", "system"])
def test_perf_analyzer_runs_unchanged(
    perf_analyzer: Path,
    server: ServerProcess,
    scrape_metrics: Callable[[int], MetricSamples],
    tmp_path: Path,
    shared_memory: str,
    protocol: str,
) -> None:
    before = scrape_metrics(server.metrics_port)
    report = tmp_path / "report.csv"
    done = subprocess.run(
        [
            str(perf_analyzer),
            "-m",
            "simple",
            "-i",
            protocol,
            "-u",
            server.address if protocol == "grpc" else server.http_address,
            "--shared-memory",
            shared_memory,
            "--concurrency-range",
            "1:2",
            # Short windows; a stability threshold of 100% accepts the first three alike, and
            # up to ten windows leave room for a busy machine (CI's two shared cores).
            "-p",
            "500",
            "-s",
            "100",
            "-r",
            "10",
            "-f",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(report.open()))
    # perf_analyzer orders its rows by throughput, not by concurrency.
    assert sorted(row["Concurrency"] for row in rows) == ["1", "2"], rows
    assert all(float(row["Inferences/Second"]) > 0 for row in rows), rows
    after = scrape_metrics(server.metrics_port)
    moved = shm_input_bytes(after) - shm_input_bytes(before)
    if shared_memory == "system":
        # Every request's two inputs by reference, and the regions gone again at the end.
        assert moved > 0 and moved % (2 * 16 * 4) == 0, moved
        assert after.value("trtserve_shared_memory_regions", kind="system") == 0
    else:
        assert moved == 0
