"""A `trtserve serve` process for the reliability benchmarks, and what /proc says about it.

Used by overload.py, soak.py and sigterm_drain.py; each starts its own server on loopback
(with --insecure-local-admin, so it may load and upload) on a repository it writes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(
    r"serving gRPC on ([^ ]+):(\d+)(?: \(TLS\))?(?:, HTTP (?:on [^ ]+:(\d+)(?: \(TLS\))?|off))?"
    r"(?:, metrics (?:on [^ ]+:(\d+)|off))?"
)


@dataclass
class ServerUnderTest:
    """A server subprocess, its address and everything it printed."""

    popen: subprocess.Popen[str]
    address: str = ""
    # -1: no metrics port (or none printed, as the floor server prints none).
    metrics_port: int = -1
    http_port: int = -1
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_mib(self) -> float:
        """Resident set size (VmRSS) in MiB."""
        return self._status_kib("VmRSS") / 1024

    def threads(self) -> int:
        return self._status_kib("Threads")

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_s(self) -> float:
        """User + system CPU seconds of every thread, with its live child processes' (the
        workers of `serve --workers N`)."""
        return sum(_cpu_s(pid) for pid in process_tree(self.pid))

    def sigterm(self) -> float:
        """Send SIGTERM; the monotonic time it was sent."""
        sent = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        return sent

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 60 s); the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(10)


def launch(
    args: Sequence[str], name: str = "server", timeout: float = 120.0, python: str = sys.executable
) -> ServerUnderTest:
    """Run `python -u ARGS` and return once it prints its `serving gRPC on HOST:PORT` line."""
    # A free HTTP port, as `--grpc-port 0` takes a free gRPC port (by the environment, which
    # a checkout from before the REST port ignores).
    env = {**os.environ, "TRTSERVE_HTTP_PORT": os.environ.get("TRTSERVE_HTTP_PORT", "0")}
    popen = subprocess.Popen(
        [python, "-u", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    server = ServerUnderTest(popen)
    ready = threading.Event()

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            server.output.append(line)
            if not server.address and (m := READY.search(line)):
                server.address = f"{m.group(1)}:{m.group(2)}"
                server.http_port = int(m.group(3)) if m.group(3) else -1
                server.metrics_port = int(m.group(4)) if m.group(4) else -1
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not server.address:
        popen.kill()
        raise RuntimeError(f"{name} did not start:\n" + "".join(server.output))
    return server


def start(
    repository: Path | None,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    *,
    metrics: bool = False,
    python: str = sys.executable,
) -> ServerUnderTest:
    """Start `trtserve serve` on a free loopback port; return once it is serving.

    `repository` None serves the built-in models. `metrics` opens the metrics port too (on a
    free port: `metrics_port`); `python` is the interpreter that runs it (another checkout's
    virtualenv measures that checkout).
    """
    args = [
        "-m",
        "trtserve.cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0" if metrics else "-1",
        "--insecure-local-admin",
        *(["--repository", str(repository)] if repository is not None else []),
        *extra_args,
    ]
    return launch(args, "trtserve", timeout, python)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # exited since it was listed
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (a supervisor's workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree
