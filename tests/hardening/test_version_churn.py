"""Versions that stop serving leave /metrics and ModelStatistics: 50 new versions, no growth."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import MetricSamples
from prometheus_client import CollectorRegistry, generate_latest
from served import Served, serving
from server_process import start_server
from tiny_models import add_config, add_constant_model, add_request, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.metrics import ServerMetrics

TIMEOUT_S = 30.0
MODEL = "churn"
CYCLES = 50
# Two-digit versions only, so every cycle's label values have the same length.
FIRST_VERSION = 10
Scrape = Callable[[int], MetricSamples]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    repository = tmp_path / "repository"
    write_model(repository, MODEL, FIRST_VERSION - 1, add_constant_model(0.0))
    with serving(start_server(["--repository", str(repository)]), repository) as served:
        yield served


def trtserve_series(text: str) -> list[str]:
    """The server's own series, with values dropped (their digits vary) and versions masked."""
    return [
        re.sub(r'version="\d+"', 'version="V"', line.rsplit(" ", 1)[0])
        for line in text.splitlines()
        if line.startswith("trtserve_")
    ]


def new_version(served: Served, version: int) -> None:
    request = pb.RepositoryModelLoadRequest(model_name=MODEL)
    request.parameters[f"file:{version}/model.onnx"].bytes_param = add_constant_model(version)
    request.parameters["config"].string_param = add_config(MODEL)
    served.stub.RepositoryModelLoad(request, timeout=TIMEOUT_S)
    served.stub.ModelInfer(add_request(MODEL)[0], timeout=TIMEOUT_S)


def test_replaced_and_unloaded_versions_leave_no_series(
    served: Served, scrape_metrics: Scrape
) -> None:
    port = served.process.metrics_port
    new_version(served, FIRST_VERSION)
    first = scrape_metrics(port)
    series = trtserve_series(first.text)
    assert f'version="{FIRST_VERSION}"' in first.text
    for version in range(FIRST_VERSION + 1, FIRST_VERSION + CYCLES):
        new_version(served, version)
        text = scrape_metrics(port).text
        assert trtserve_series(text) == series, f"series changed at version {version}"
        stats = served.stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=TIMEOUT_S)
        assert [(s.name, s.version) for s in stats.model_stats] == [(MODEL, str(version))]
        assert stats.model_stats[0].inference_count == 1
    own = [line for line in text.splitlines() if f'model="{MODEL}"' in line]
    assert own
    assert all(f'version="{version}"' in line for line in own)

    served.stub.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=TIMEOUT_S
    )
    unloaded = scrape_metrics(port)
    # Only the model's state remains, for its last version.
    names = {line.split("{")[0] for line in unloaded.text.splitlines() if "model=" in line}
    assert names == {"trtserve_model_state"}
    assert (
        unloaded.value(
            "trtserve_model_state", model=MODEL, version=str(version), state="UNAVAILABLE"
        )
        == 1
    )
    stats = served.stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=TIMEOUT_S)
    assert list(stats.model_stats) == []


def test_a_late_request_of_a_dropped_version_brings_no_series_back() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    late = metrics.version(MODEL, "1")
    late.record_request("success", 1_000, None)
    metrics.drop_version(MODEL, "1")
    # A request that still held the old version ends after the drop, with a new outcome.
    late.record_request("unavailable", 1_000, None)
    text = generate_latest(registry).decode()
    assert 'version="1"' not in text, text
