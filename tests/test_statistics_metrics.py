"""ModelStatistics is read back from the Prometheus metrics: what is recorded is what reads back.

One process here; tests/hardening/test_statistics_multiprocess.py sums worker processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from trtserve.server.app import request_limits
from trtserve.server.counts_files import read_counts
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.dataplane.serving_state import ServingState
from trtserve.server.metrics import (
    BatchStats,
    CountsCollector,
    Duration,
    ServerMetrics,
    VersionMetrics,
    VersionStats,
    version_statistics,
)
from trtserve.server.model_state import ModelState
from trtserve.server.settings import ServerSettings


def record_known(version: VersionMetrics) -> None:
    """Two successes, two failures and three batches (two of size 5, one of size 1)."""
    version.record_request("success", 1_000_000, 100_000, batch_size=2)
    version.record_request("success", 3_000_000, None, batch_size=3)
    version.record_request("invalid_argument", 500_000, None)
    version.record_request("cancelled", 700_000, 50_000)
    version.record_execution(5, 2, 10_000, 2_000_000, 30_000)
    version.record_execution(1, 1, 1_000, 100_000, 3_000)
    version.record_execution(5, 2, 20_000, 4_000_000, 60_000)


# What record_known reads back as, but for the last inference (a clock reading).
KNOWN = VersionStats(
    success=Duration(2, 4_000_000),
    fail=Duration(2, 1_200_000),
    queue=Duration(2, 150_000),
    # Per request: each of a batch's requests counts the batch's whole time.
    compute_input=Duration(5, 2 * 10_000 + 1_000 + 2 * 20_000),
    compute_infer=Duration(5, 2 * 2_000_000 + 100_000 + 2 * 4_000_000),
    compute_output=Duration(5, 2 * 30_000 + 3_000 + 2 * 60_000),
    inference_count=5,
    execution_count=3,
    batches={
        5: BatchStats(Duration(2, 30_000), Duration(2, 6_000_000), Duration(2, 90_000)),
        1: BatchStats(Duration(1, 1_000), Duration(1, 100_000), Duration(1, 3_000)),
    },
)


def without_last_inference(stats: VersionStats) -> VersionStats:
    return VersionStats(**{**vars(stats), "last_inference_ms": 0})


def test_statistics_read_back_what_was_recorded() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    before_ms = time.time_ns() // 1_000_000
    record_known(metrics.version("m", "1"))
    after_ms = time.time_ns() // 1_000_000

    stats = metrics.statistics()
    assert list(stats) == [("m", "1")]
    assert without_last_inference(stats["m", "1"]) == KNOWN
    assert before_ms <= stats["m", "1"].last_inference_ms <= after_ms


def test_a_version_reads_as_zeros_before_its_first_request() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.version("m", "1")
    assert metrics.statistics() == {("m", "1"): VersionStats()}


def test_a_failure_adds_no_inference_and_keeps_the_last_inference_time() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    version = metrics.version("m", "1")
    version.record_request("success", 1_000, None, batch_size=4)
    last = metrics.statistics()["m", "1"].last_inference_ms
    version.record_request("internal", 2_000, None, batch_size=4)
    stats = metrics.statistics()["m", "1"]
    assert (stats.inference_count, stats.last_inference_ms) == (4, last)
    assert (stats.success, stats.fail) == (Duration(1, 1_000), Duration(1, 2_000))


def test_the_whole_registry_reads_the_same_and_other_families_add_no_versions() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    record_known(metrics.version("m", "1"))
    # A model whose only series is its state: not a version with statistics.
    metrics.set_state("other", ["3"], ModelState.UNAVAILABLE)
    assert version_statistics(registry.collect()) == metrics.statistics()


def doubled(stats: VersionStats) -> VersionStats:
    """`stats` recorded twice (two workers), but for the last inference."""
    twice = VersionStats(
        inference_count=2 * stats.inference_count, execution_count=2 * stats.execution_count
    )
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        one: Duration = getattr(stats, name)
        setattr(twice, name, Duration(2 * one.count, 2 * one.ns))
    for size, batch in stats.batches.items():
        twice.batches[size] = BatchStats(
            *(
                Duration(2 * d.count, 2 * d.ns)
                for d in (batch.compute_input, batch.compute_infer, batch.compute_output)
            )
        )
    return twice


def test_workers_read_the_sum_of_every_workers_counts_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ServerMetrics(CollectorRegistry(), counts_folder=tmp_path)
    second = ServerMetrics(CollectorRegistry(), counts_folder=tmp_path)
    started = time.time()
    record_known(first.version("m", "1"))
    between = time.time()
    record_known(second.version("m", "1"))
    # The second has not written yet: the first reads its own counts only (written as it reads).
    assert without_last_inference(first.statistics()["m", "1"]) == KNOWN
    second.publish_counts()
    (tmp_path / "counts_1_2.json").write_text('[["trtserve_requests_total", {"model"')
    summed = first.statistics()["m", "1"]
    assert without_last_inference(summed) == doubled(KNOWN)
    assert "skipping the request counts in" in caplog.text
    # What the supervisor's /metrics shows: the same sums.
    supervisor = CollectorRegistry()
    supervisor.register(CountsCollector(lambda: read_counts(tmp_path)))
    assert without_last_inference(version_statistics(supervisor.collect())["m", "1"]) == (
        doubled(KNOWN)
    )
    labels = {"model": "m", "version": "1", "outcome": "success"}
    assert supervisor.get_sample_value("trtserve_requests_total", labels) == 4
    # A series summed over workers began when the first worker's did (not a sum of times).
    created = supervisor.get_sample_value("trtserve_requests_created", labels)
    assert created is not None and started <= created <= between


def test_a_worker_keeps_the_counts_of_a_version_it_dropped(tmp_path: Path) -> None:
    metrics = ServerMetrics(CollectorRegistry(), counts_folder=tmp_path)
    record_known(metrics.version("m", "1"))
    metrics.drop_version("m", "1")
    metrics.version("m", "1").record_request("success", 1_000, None)
    # Summed over processes, a count must never go backwards: the reloaded version goes on.
    assert metrics.statistics()["m", "1"].success.count == 3


def test_a_dropped_version_leaves_the_statistics() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    late = metrics.version("m", "1")
    record_known(late)
    metrics.version("m", "2")
    metrics.drop_version("m", "1")
    # Late work of the dropped version, in a batch size and an outcome never seen before.
    late.record_execution(9, 1, 1, 1, 1)
    late.record_request("unavailable", 1, None)
    assert list(metrics.statistics()) == [("m", "2")]


def test_publish_pending_is_harmless_in_one_process() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    pending = [3]
    metrics.version("m", "1").add_pending_source(lambda: pending[0])
    metrics.publish_pending()
    pending[0] = 5
    labels = {"model": "m", "version": "1"}
    # The gauge function still answers: the scrape sees now, not the published value.
    assert registry.get_sample_value("trtserve_pending_requests", labels) == 5


def test_the_data_plane_lists_only_the_versions_it_serves() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    # Statistics of a version no longer served, kept as multiprocess mode's files keep them.
    record_known(metrics.version("m", "1"))
    metrics.version("m", "2").record_request("success", 1_000, None)
    serving = [SimpleNamespace(name="n", version=3), SimpleNamespace(name="m", version=2)]
    manager = SimpleNamespace(serving_models=lambda: serving, get=lambda name, version: None)
    plane = DataPlane(
        manager,  # type: ignore[arg-type]
        metrics,
        ServingState(),
        "test",
        request_limits(ServerSettings()),
        None,  # type: ignore[arg-type]
        0,
    )

    every = plane.statistics("", "")
    assert [(model, version) for model, version, _ in every] == [("m", "2"), ("n", "3")]
    assert every[0][2].success == Duration(1, 1_000)
    # Served, but never recorded anything here: listed, with zeros.
    assert every[1][2] == VersionStats()
    assert [(m, v) for m, v, _ in plane.statistics("m", "")] == [("m", "2")]
    assert plane.statistics("m", "1") == []


def test_each_served_version_has_state_series_and_a_dropped_one_loses_them() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)

    def ready(version: str) -> float | None:
        labels = {"model": "m", "version": version, "state": "READY"}
        return registry.get_sample_value("trtserve_model_state", labels)

    metrics.set_state("m", ["1", "2"], ModelState.READY)
    assert (ready("1"), ready("2")) == (1.0, 1.0)
    metrics.set_state("m", ["2", "3"], ModelState.READY)
    assert (ready("1"), ready("2"), ready("3")) == (None, 1.0, 1.0)


def test_a_worker_that_cannot_write_its_counts_still_answers_and_writes_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="trtserve.server.metrics")
    folder = tmp_path / "metrics"
    folder.mkdir()
    metrics = ServerMetrics(CollectorRegistry(), counts_folder=folder)
    record_known(metrics.version("m", "1"))
    folder.rmdir()  # the write fails, as on a full disk
    assert metrics.statistics() == {}
    metrics.statistics()
    assert caplog.text.count("cannot write the request counts") == 1
    folder.mkdir()
    assert without_last_inference(metrics.statistics()["m", "1"]) == KNOWN
    assert "request counts written again" in caplog.text


def test_a_workers_file_shows_a_new_instance_before_it_executes(tmp_path: Path) -> None:
    metrics = ServerMetrics(CollectorRegistry(), counts_folder=tmp_path)
    version = metrics.version("m", "1")
    metrics.publish_counts()
    version.add_instance("0", "gpu:0")
    metrics.publish_counts()
    executions = [
        (s.labels["instance"], s.value)
        for s in read_counts(tmp_path)
        if s.name == "trtserve_instance_executions_total"
    ]
    assert executions == [("0", 0.0)]


def test_a_workers_file_keeps_idle_versions_and_updates_busy_ones(tmp_path: Path) -> None:
    metrics = ServerMetrics(CollectorRegistry(), counts_folder=tmp_path)
    idle, busy = metrics.version("m", "1"), metrics.version("m", "2")
    idle.record_request("success", 1_000, None)
    metrics.publish_counts()
    busy.record_request("success", 1_000, None)
    busy.record_request("success", 1_000, None)
    metrics.publish_counts()
    stats = version_statistics(CountsCollector(lambda: read_counts(tmp_path)).collect())
    assert (stats["m", "1"].success.count, stats["m", "2"].success.count) == (1, 2)
