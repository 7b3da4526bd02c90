"""Start a real `trtserve serve` process for end-to-end tests and stop it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_READY = re.compile(
    r"serving gRPC on ([^ ]+):(\d+)(?: \(TLS\))?, HTTP (?:on [^ ]+:(\d+)(?: \(TLS\))?|off), "
    r"metrics (?:on [^ ]+:(\d+)|off)(?:, models (.*))?"
)


@dataclass
class ServerProcess:
    """A server subprocess, its ports and everything it printed."""

    process: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int
    output: list[str] = field(default_factory=list)
    # -1 when the server serves no HTTP.
    http_port: int = -1
    # The ready line's list of the models it serves, as printed.
    models: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit and return its status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_server(
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    *,
    local_admin: bool = True,
    host: str | None = "127.0.0.1",
) -> ServerProcess:
    """Run `trtserve serve` on free loopback ports; return once it reports it is serving.

    `local_admin` adds --insecure-local-admin, so tests may load, unload and upload without
    credentials; tests of access control turn it off. `host` None leaves --host out.
    """
    args = [
        sys.executable,
        "-u",
        "-m",
        "trtserve.cli.main",
        "serve",
        *(["--host", host] if host is not None else []),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        *(["--insecure-local-admin"] if local_admin else []),
        *extra_args,
    ]
    return spawn(args, {**os.environ, **(env or {})}, timeout)


def spawn(command: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> ServerProcess:
    """Run `command`, a server that prints trtserve's ready line; return once it has."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env),
        cwd=Path(__file__).resolve().parent.parent,
    )
    lines: list[str] = []
    found: list[re.Match[str]] = []
    done = threading.Event()

    def pump() -> None:
        # Read to the end, or the server blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if not found and (m := _READY.search(line)):
                found.append(m)
                done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    if not done.wait(timeout) or not found:
        process.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))
    m = found[0]
    return ServerProcess(
        process,
        grpc_port=int(m.group(2)),
        metrics_port=int(m.group(4) or -1),
        output=lines,
        models=m.group(5) or "",
        http_port=int(m.group(3) or -1),
    )


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the `trtserve` command to its end; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "trtserve.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def serve_fails(args: Sequence[str]) -> str:
    """Run `trtserve serve` expecting it to refuse to start (exit 2); its output."""
    result = run_cli("serve", "--grpc-port", "0", *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stdout + result.stderr
