"""Shared fixtures: a real server process on loopback with the built-in models."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Every server a test starts takes a free HTTP port, as it takes a free gRPC port with
# `--grpc-port 0`: servers of several tests run at once, and 8000 may be taken on the host.
os.environ.setdefault("TRTSERVE_HTTP_PORT", "0")

from server_process import ServerProcess, start_server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One server with the built-in models, shared by the tests that only read from it."""
    proc = start_server()
    yield proc
    proc.terminate()


@pytest.fixture(scope="session")
def server_address(server: ServerProcess) -> str:
    """host:port of the shared server."""
    return server.address


@pytest.fixture(scope="session")
def dense_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dense ONNX model (width 2048, 8 layers), built once: a few ms per request on a core."""
    from trtserve.server.default_model import build_dense_model

    path = tmp_path_factory.mktemp("dense-model") / "model.onnx"
    path.write_bytes(build_dense_model(width=2048, layers=8))
    return path


RepositoryFactory = Callable[[Mapping[str, tuple[str, "bytes | Path"]]], Path]


@pytest.fixture(scope="session")
def make_repository(tmp_path_factory: pytest.TempPathFactory) -> RepositoryFactory:
    """Write a fresh Triton-layout repository: {model: (config.pbtxt text, ONNX bytes or file)}.

    Each model's file lands as `<model>/1/model.onnx`; a file given as a path is hard-linked
    (the dense model is large), bytes are written.
    """

    def make(models: Mapping[str, tuple[str, bytes | Path]]) -> Path:
        root = tmp_path_factory.mktemp("repository")
        for name, (config, model) in models.items():
            version = root / name / "1"
            version.mkdir(parents=True)
            (root / name / "config.pbtxt").write_text(config)
            if isinstance(model, Path):
                os.link(model, version / "model.onnx")
            else:
                (version / "model.onnx").write_bytes(model)
        return root

    return make


@dataclass(frozen=True)
class MetricSamples:
    """One scrape of a server's /metrics: every sample by name and labels."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the server has not exported it (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


@pytest.fixture(scope="session")
def scrape_metrics() -> Callable[[int], MetricSamples]:
    """Read and parse `http://127.0.0.1:<port>/metrics`."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(port: int) -> MetricSamples:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return MetricSamples(text, samples)

    return scrape
