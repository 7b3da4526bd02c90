"""The TensorRT backend puts its lean runtime metrics on the registry it is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.runtime.lean_cache import LeanCache


def test_the_lean_runtime_metrics_are_on_the_given_registry() -> None:
    registry = CollectorRegistry()
    TensorRTBackend(runtimes=LeanCache(), registry=registry)
    count = "trtserve_lean_runtime_load_seconds_count"
    assert registry.get_sample_value(count) == 0
