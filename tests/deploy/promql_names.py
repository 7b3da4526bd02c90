"""Metric names in PromQL text, and the sample names a Prometheus exposition really carries."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

# Every trtserve metric starts with this prefix; PromQL functions and label names never do.
_METRIC = re.compile(r"\btrtserve_[A-Za-z0-9_:]*")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def metric_names(promql: str) -> set[str]:
    """The trtserve metric names a PromQL expression reads."""
    return set(_METRIC.findall(promql))


def sample_names(families: Iterable[Metric]) -> set[str]:
    """Names a scrape can return for these families, also for families with no sample yet.

    A labelled metric shows no sample until its first child exists (lean runtime metrics before
    a runtime loads), but its type fixes the names: counters `_total`, histograms
    `_bucket`/`_sum`/`_count`.
    """
    names: set[str] = set()
    for family in families:
        names.update(s.name for s in family.samples if not s.name.endswith("_created"))
        suffixes = _SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names
