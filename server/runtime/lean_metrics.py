"""The lean runtime cache's metrics, a collector each server registers on its own registry.

The cache is process-wide (one dispatch runtime per process), so its metrics belong to no
registry: every server in the process registers the same collector and reports the same
runtimes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from trtserve.server.metrics import MULTIPROCESS


class LeanRuntimeMetrics:
    """The four lean runtime metric families; register the object on a CollectorRegistry."""

    def __init__(self) -> None:
        # registry=None: the families are exported through collect() only.
        self.loaded = Gauge(
            "trtserve_lean_runtimes_loaded",
            "TensorRT lean runtimes loaded in this process (1 per loaded version)",
            ["version"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.references = Gauge(
            "trtserve_lean_runtime_references",
            "Engines using each loaded TensorRT lean runtime",
            ["version"],
            registry=None,
            multiprocess_mode="livesum",
        )
        # A version loaded more than once was dropped as unused in between (see `max_unused`).
        self.loads = Counter(
            "trtserve_lean_runtime_loads",
            "Times each TensorRT lean runtime version was loaded in this process",
            ["version"],
            registry=None,
        )
        self.load_seconds = Histogram(
            "trtserve_lean_runtime_load_seconds",
            "Time to load one TensorRT lean runtime library",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=None,
        )
        self._families: tuple[Gauge | Counter | Histogram, ...] = (
            self.loaded,
            self.references,
            self.loads,
            self.load_seconds,
        )

    def forget(self, version: str) -> None:
        """Drop the gauges' series of a runtime no longer loaded.

        Zeroed first: in multiprocess mode the file keeps a removed series' value, and remove()
        only warns.
        """
        for gauge in (self.loaded, self.references):
            gauge.labels(version).set(0)
            if not MULTIPROCESS:
                gauge.remove(version)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield from family.collect()

    def describe(self) -> Iterable[Metric]:
        return [metric for family in self._families for metric in family.describe()]
