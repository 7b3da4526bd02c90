"""Request counts shared between worker processes: one file per process, summed by readers.

Under `serve --workers N` each worker writes its request counts (their samples) to its own file
in the metrics folder, replacing the file whole, so a reader never sees half of one. Readers (the
supervisor's /metrics, every worker's ModelStatistics) sum every file, those of workers that
died included, so the sums never go backwards. A worker writes when its counts changed, every
few tens of milliseconds and before it reads (see ServerMetrics.publish).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.samples import Sample

from trtserve.server.request_counts import LAST_INFERENCE

log = logging.getLogger(__name__)

_PATTERN = "counts_*.json"


class CountsFile:
    """This process's file of counts in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # The start time too: a later process given the same pid must not replace this file.
        self._path = folder / f"counts_{os.getpid()}_{time.time_ns()}.json"

    def write(self, parts: Iterable[str]) -> None:
        """Replace the file with the samples of `parts` (each from `encode`)."""
        text = "[" + ",".join(part for part in parts if part) + "]"
        partial = self._path.with_suffix(".partial")
        partial.write_text(text)
        os.replace(partial, self._path)


def encode(samples: Iterable[Sample]) -> str:
    """Samples as a part of a counts file (writers keep the parts of what did not change)."""
    return json.dumps([[s.name, s.labels, s.value] for s in samples], separators=(",", ":"))[1:-1]


def read_counts(folder: Path) -> list[Sample]:
    """Every process's samples in `folder`, summed by name and labels.

    The last-inference timestamp is the latest of them and a series' creation time the
    earliest, not sums. A file that cannot be read
    is skipped with a warning: one damaged file must not take /metrics down.
    """
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for path in sorted(folder.glob(_PATTERN)):
        try:
            entries = [
                (str(name), tuple((str(k), str(v)) for k, v in labels.items()), float(value))
                for name, labels, value in json.loads(path.read_text())
            ]
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.warning("skipping the request counts in %s: %s", path, error)
            continue
        for name, labels, value in entries:
            key = (name, labels)
            if name == LAST_INFERENCE:
                totals[key] = max(totals.get(key, 0.0), value)
            elif name.endswith("_created"):
                # A series summed over processes began when its first process's did.
                totals[key] = min(totals.get(key, value), value)
            else:
                totals[key] = totals.get(key, 0.0) + value
    return [Sample(name, dict(labels), value) for (name, labels), value in totals.items()]
