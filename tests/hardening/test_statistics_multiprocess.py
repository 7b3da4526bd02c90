"""Statistics summed over worker processes.

Each worker writes its request counts to a file of its own (counts_files) and its gauges to
prometheus-client's multiprocess files, both under PROMETHEUS_MULTIPROC_DIR, which must be set
before prometheus_client is imported: the workers here are fresh interpreters. A worker killed
with SIGKILL leaves its files, so the sums never go backwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from trtserve.server.counts_files import read_counts
from trtserve.server.metrics import (
    CountsCollector,
    Duration,
    ServerMetrics,
    VersionStats,
    version_statistics,
)
from trtserve.server.model_state import ModelState

# A worker: sets states, records its plan for version m/1, says "recorded", then obeys lines on
# stdin ("drop": drop m/1 and lean runtime 10.0) until it ends. -W error::UserWarning, because
# prometheus-client warns so when a series is removed in multiprocess mode (the file keeps it).
WORKER = """
import json, os, sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from trtserve.server.metrics import MULTIPROCESS, ServerMetrics
from trtserve.server.model_state import ModelState
from trtserve.server.runtime.lean_metrics import LeanRuntimeMetrics

assert MULTIPROCESS, "PROMETHEUS_MULTIPROC_DIR was not set before the import"
plan = json.loads(sys.argv[1])
folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
metrics = ServerMetrics(CollectorRegistry(), counts_folder=folder)
lean = LeanRuntimeMetrics()
lean.loaded.labels("10.0").set(1)
for version in plan["serves"]:
    metrics.set_state("m", [version], ModelState.READY)
bound = metrics.version("m", "1")
bound.add_pending_source(lambda: plan["pending"])
metrics.publish_pending()
for outcome, total_ns, queue_ns, batch_size in plan["requests"]:
    bound.record_request(outcome, total_ns, queue_ns, batch_size)
for execution in plan["executions"]:
    bound.record_execution(*execution)
metrics.publish_counts()
print("recorded", flush=True)
for line in sys.stdin:
    if line.strip() == "drop":
        metrics.drop_version("m", "1")
        metrics.publish_counts()
        lean.forget("10.0")
        print("dropped", flush=True)
"""

# Worker A serves m/1 and is killed; worker B went on to m/2 (m/1 replaced there).
PLAN_A: dict[str, Any] = {
    "serves": ["1"],
    "pending": 3,
    "requests": [["success", 1_000_000, 100_000, 2], ["internal", 400_000, None, 1]],
    "executions": [[2, 1, 10_000, 500_000, 20_000]],
}
PLAN_B: dict[str, Any] = {
    "serves": ["1", "2"],
    "pending": 4,
    "requests": [["success", 3_000_000, 200_000, 4], ["success", 2_000_000, None, 1]],
    "executions": [[4, 1, 30_000, 1_500_000, 40_000], [2, 2, 5_000, 600_000, 7_000]],
}


class Worker:
    def __init__(self, directory: Path, plan: dict[str, Any]) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        self.process = subprocess.Popen(
            [sys.executable, "-W", "error::UserWarning", "-c", WORKER, json.dumps(plan)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def said(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def end(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Path, Worker, Worker]]:
    started = [Worker(tmp_path, PLAN_A), Worker(tmp_path, PLAN_B)]
    yield tmp_path, started[0], started[1]
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(timeout=30)


def replayed(*plans: dict[str, Any]) -> VersionStats:
    """The statistics of `plans` recorded in this process (in memory), for version m/1."""
    metrics = ServerMetrics(CollectorRegistry())
    bound = metrics.version("m", "1")
    for plan in plans:
        for outcome, total_ns, queue_ns, batch_size in plan["requests"]:
            bound.record_request(outcome, total_ns, queue_ns, batch_size)
        for execution in plan["executions"]:
            bound.record_execution(*execution)
    stats = metrics.statistics()["m", "1"]
    stats.last_inference_ms = 0
    return stats


def summed_statistics(directory: Path) -> dict[tuple[str, str], VersionStats]:
    """What the supervisor's /metrics and every worker's ModelStatistics read."""
    return version_statistics(CountsCollector(lambda: read_counts(directory)).collect())


def gauge(directory: Path, name: str, **labels: str) -> float | None:
    for family in MultiProcessCollector(None, str(directory)).collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_statistics_sum_every_worker_even_one_killed(
    workers: tuple[Path, Worker, Worker],
) -> None:
    directory, a, b = workers
    before_ms = time.time_ns() // 1_000_000
    assert (a.said(), b.said()) == ("recorded", "recorded")
    after_ms = time.time_ns() // 1_000_000
    a.process.send_signal(signal.SIGKILL)
    assert a.process.wait(timeout=30) == -signal.SIGKILL
    assert b.end() == 0

    stats = summed_statistics(directory)
    summed = stats["m", "1"]
    assert before_ms <= summed.last_inference_ms <= after_ms
    summed.last_inference_ms = 0
    assert summed == replayed(PLAN_A, PLAN_B)
    # The sums, by hand, for what the replay could get wrong in the same way.
    assert summed.success == Duration(3, 6_000_000)
    assert summed.fail == Duration(1, 400_000)
    assert summed.queue == Duration(2, 300_000)  # one success never queued
    assert summed.compute_infer == Duration(4, 500_000 + 1_500_000 + 2 * 600_000)
    assert (summed.inference_count, summed.execution_count) == (7, 3)
    assert summed.batches[2].compute_infer == Duration(2, 1_100_000)
    assert summed.batches[4].compute_output == Duration(1, 40_000)


def test_gauges_of_replaced_versions_dead_workers_and_dropped_versions(
    workers: tuple[Path, Worker, Worker],
) -> None:
    directory, a, b = workers
    assert (a.said(), b.said()) == ("recorded", "recorded")
    state = "trtserve_model_state"
    pending = "trtserve_pending_requests"
    lean = "trtserve_lean_runtimes_loaded"
    # Worker A still serves m/1: the state is the highest over live workers.
    assert gauge(directory, state, model="m", version="1", state=ModelState.READY) == 1
    assert gauge(directory, pending, model="m", version="1") == 3 + 4
    assert gauge(directory, lean, version="10.0") == 2

    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=30)
    mark_process_dead(a.process.pid, str(directory))
    # B replaced m/1 by m/2: the series it left in its file reads 0.
    assert gauge(directory, state, model="m", version="1", state=ModelState.READY) == 0
    assert gauge(directory, state, model="m", version="2", state=ModelState.READY) == 1
    assert gauge(directory, pending, model="m", version="1") == 4
    assert gauge(directory, lean, version="10.0") == 1

    b.tell("drop")
    assert b.said() == "dropped"
    assert gauge(directory, pending, model="m", version="1") == 0
    assert gauge(directory, lean, version="10.0") == 0
    # Dropped, but the counters stay: a later read must not go backwards.
    stats = summed_statistics(directory)
    assert stats["m", "1"].success.count == 3
    assert b.end() == 0
