"""What `trtserve serve` says as it starts: settings it refuses, and its ready line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from server_process import start_server


def serve_refused(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trtserve.cli.main", "serve", "--grpc-port", "0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--log-level", "verbose"],
            "setting log_level: expected one of DEBUG, INFO, WARNING, ERROR, received 'verbose'",
        ),
        (
            ["--insecure-local-admin", "--host", "0.0.0.0"],
            "setting insecure_local_admin: gives admin to every caller, so the server listens "
            "on this machine only; expected host unset or one of",
        ),
    ],
    ids=["log level", "admin on every interface"],
)
def test_a_setting_that_cannot_work_stops_the_start_with_one_line(
    args: list[str], message: str
) -> None:
    done = serve_refused(*args, "--metrics-port", "-1")
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert message in output, output
    assert "Traceback" not in output and "serving gRPC" not in output, output


def test_the_ready_line_says_metrics_are_off() -> None:
    server = start_server(["--metrics-port", "-1"])
    try:
        ready = next(line for line in server.output if "serving gRPC on" in line)
        assert ", metrics off, models" in ready, ready
        assert server.metrics_port == -1
    finally:
        server.terminate()
