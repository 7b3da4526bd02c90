"""Request counts kept as plain numbers export what prometheus-client's own metrics would."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from trtserve.server.metrics import ServerMetrics
from trtserve.server.request_counts import LATENCY_BUCKETS, Buckets

# Below the first bound, on bounds (which belong to their bucket), between, above every bound.
OBSERVED = (1e-6, 5e-5, 1e-4, 3e-4, 0.01, 1.0, 29.0, 30.0, 31.0, 1e4)


def without_created(samples: list[Sample]) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for s in samples if not s.name.endswith("_created")]


def test_buckets_read_as_prometheus_clients_histogram_of_the_same_observations() -> None:
    reference = Histogram("h", "doc", ("model",), buckets=LATENCY_BUCKETS, registry=None)
    ours = Buckets(LATENCY_BUCKETS, created=1234.5)
    for value in OBSERVED:
        reference.labels("m").observe(value)
        ours.observe(value)
    [family] = reference.collect()
    samples = list(ours.samples("h", {"model": "m"}))
    assert without_created(samples) == without_created(family.samples)
    assert [s.value for s in samples if s.name == "h_created"] == [1234.5]


def test_a_scrape_parses_with_the_counts_of_what_was_recorded() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    before = time.time()
    version = metrics.version("m", "1")
    key = version.add_instance("0", "cpu")
    version.record_request("success", 2_000_000, 500_000, batch_size=3)
    version.record_request("invalid_argument", 1_000, None)
    version.record_execution(3, 1, 1_000, 2_000, 3_000, key)
    metrics.count_tensor_bytes("input", {"inline": 48, "system_shared_memory": 16})

    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    values = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families.values()
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return values[name, frozenset(labels.items())]

    version_labels = {"model": "m", "version": "1"}
    assert families["trtserve_requests"].type == "counter"
    assert families["trtserve_request_duration_seconds"].type == "histogram"
    assert value("trtserve_requests_total", **version_labels, outcome="success") == 1
    assert value("trtserve_requests_total", **version_labels, outcome="invalid_argument") == 1
    assert value("trtserve_request_duration_seconds_count", **version_labels) == 2
    assert value("trtserve_inference_count_total", **version_labels) == 3
    assert value("trtserve_queue_duration_seconds_sum", **version_labels) == 0.0005
    executions = "trtserve_instance_executions_total"
    assert value(executions, **version_labels, instance="0", device="cpu") == 1
    compute = "trtserve_batch_compute_seconds_total"
    assert value(compute, **version_labels, batch_size="3", phase="infer") == 2e-6
    assert value("trtserve_tensor_bytes_total", direction="input", path="inline") == 48
    assert value("trtserve_tensor_bytes_total", direction="output", path="inline") == 0
    # Each series says when it appeared, as prometheus-client's own counters do.
    created = value("trtserve_requests_created", **version_labels, outcome="invalid_argument")
    assert before <= created <= time.time()
    assert value("trtserve_request_duration_seconds_created", **version_labels) >= before
