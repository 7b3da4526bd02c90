"""Every query of the Grafana dashboard reads metrics a live server exports."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from promql_names import metric_names, sample_names
from server_process import ServerProcess, start_server

from trtserve.client import InferenceClient, InferenceServerError, InferInput
from trtserve.server.runtime.lean_metrics import LeanRuntimeMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "trtserve-dashboard.json"


def dashboard_queries() -> list[str]:
    """Every PromQL text of the dashboard: panel targets and template variable queries."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    """A fresh server that answered good and bad requests, so every model metric has samples."""
    proc = start_server()
    try:
        x = np.ones((1, 16), dtype=np.float32)
        with InferenceClient(proc.address, timeout=30) as client:
            for _ in range(3):
                client.infer("simple", [InferInput("INPUT0", x), InferInput("INPUT1", x)])
            with pytest.raises(InferenceServerError):
                client.infer("simple", [InferInput("INPUT0", x)])
        yield proc
    finally:
        proc.terminate()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    names = set().union(*(metric_names(q) for q in dashboard_queries()))
    for wanted in (
        "trtserve_requests_total",
        "trtserve_request_duration_seconds_bucket",
        "trtserve_queue_duration_seconds_sum",
        "trtserve_compute_infer_duration_seconds_sum",
        "trtserve_batch_size_sum",
        "trtserve_lean_runtimes_loaded",
    ):
        assert wanted in names
    assert any("histogram_quantile(0.99" in q for q in dashboard_queries())
    assert any("outcome" in q for q in dashboard_queries())


def test_every_dashboard_query_names_exported_metrics(served: ServerProcess) -> None:
    families = list(text_string_to_metric_families(scrape(served.metrics_port)))
    exported = sample_names(families)
    with_samples = {s.name for f in families for s in f.samples}
    for query in dashboard_queries():
        names = metric_names(query)
        assert names, f"query reads no trtserve metric: {query}"
        missing = names - exported
        assert not missing, f"{query}: not exported by the server: {sorted(missing)}"
    # The model metrics really carry samples after traffic, not only HELP lines.
    for name in (
        "trtserve_requests_total",
        "trtserve_request_duration_seconds_bucket",
        "trtserve_batch_size_count",
        "trtserve_pending_requests",
    ):
        assert name in with_samples


def test_lean_runtime_metrics_are_the_ones_lean_cache_defines(served: ServerProcess) -> None:
    """Without a GPU no lean runtime loads, so compare with the metric objects themselves."""
    text = scrape(served.metrics_port)
    from_server = {f.name: f.type for f in text_string_to_metric_families(text)}
    registry = CollectorRegistry()
    registry.register(LeanRuntimeMetrics())
    defined = list(registry.collect())
    for family in defined:
        assert from_server.get(family.name) == family.type
    lean_names = sample_names(defined)
    lean_queries = [q for q in dashboard_queries() if "lean_runtime" in q]
    assert lean_queries
    for query in lean_queries:
        assert metric_names(query) <= lean_names
