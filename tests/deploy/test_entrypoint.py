"""deploy/docker-entrypoint.sh and deploy/healthcheck.py, run outside Docker.

The script is run the way the image runs it: settings only in TRTSERVE_* variables and a
TOML file, `trtserve` found on PATH. Because it execs the server, the script's own process is
the server: SIGTERM to that process drains and exits 0, as PID 1 in a container would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess, spawn

from trtserve.server.default_model import write_default_repository

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def image_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment the image sets, pointed at temporary folders and free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTSERVE_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp),
        TMPDIR=str(tmp),
        TRTSERVE_HOST="127.0.0.1",
        TRTSERVE_GRPC_PORT="0",
        TRTSERVE_METRICS_PORT="0",
        TRTSERVE_RUNTIMES_DIR=str(tmp / "runtimes"),
    )
    env.update(extra)
    return env


def start(env: dict[str, str], *args: str, timeout: float = 60.0) -> ServerProcess:
    """Run the entrypoint as the image does; return once the server it execs is serving."""
    return spawn([str(ENTRYPOINT), *args], env, timeout)


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"127.0.0.1:{port}", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_default_repository(root)
    return root


@pytest.fixture
def started(tmp_path: Path, repository: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "trtserve.toml"
    config.write_text('[server]\ngrace_period_s = 5\nlog_level = "INFO"\n')
    env = image_env(tmp_path, TRTSERVE_REPOSITORY=str(repository), TRTSERVE_CONFIG=str(config))
    server = start(env)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(10)


def test_entrypoint_execs_the_server_and_sigterm_drains_to_exit_0(started: ServerProcess) -> None:
    pid = started.process.pid
    # exec: the script's process is now the Python server, not a shell waiting on a child.
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline
    assert not any(part.endswith(b"docker-entrypoint.sh") for part in cmdline)
    assert "simple" in started.models

    assert healthcheck(started.grpc_port).returncode == 0

    os.kill(pid, signal.SIGTERM)
    assert started.process.wait(30) == 0
    output = "".join(started.output)
    assert "draining for up to 5.0 s" in output  # grace_period_s came from TRTSERVE_CONFIG

    after = healthcheck(started.grpc_port)
    assert after.returncode == 1
    assert "UNAVAILABLE" in after.stderr


def test_healthcheck_per_model_service(started: ServerProcess) -> None:
    model = subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"127.0.0.1:{started.grpc_port}", "--service", "simple"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert model.returncode == 0, model.stderr
    unknown = subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"127.0.0.1:{started.grpc_port}", "--service", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr


def test_flags_pass_through_and_other_commands_run(tmp_path: Path, repository: Path) -> None:
    env = image_env(tmp_path, TRTSERVE_REPOSITORY=str(tmp_path / "ignored"))
    # A flag beats the environment, as for `trtserve serve`.
    server = start(env, "--repository", str(repository))
    try:
        assert "simple" in server.models
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    listing = subprocess.run(
        [str(ENTRYPOINT), "runtimes", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert "no lean runtimes installed" in listing.stdout


def test_a_mounted_tokens_file_is_used_and_a_missing_one_is_not(
    tmp_path: Path, repository: Path
) -> None:
    from trtserve.client import InferenceClient, InferenceServerError

    token = "admin-token-0123456789abcdef"
    mount = tmp_path / "secret" / "tokens"

    def unload_as(address: str, presented: str) -> str:
        """The status of an unload of `simple` with this token ("" for none)."""
        with InferenceClient(address, timeout=30, token=presented) as client:
            try:
                client.unload_model("simple")
            except InferenceServerError as e:
                return e.code.name
        return "OK"

    for present in (False, True):
        if present:
            mount.parent.mkdir()
            mount.write_text(f"{token} admin\n")
        env = image_env(tmp_path, TRTSERVE_REPOSITORY=str(repository))
        env["TRTSERVE_TOKENS_MOUNT"] = str(mount)
        server = start(env)
        try:
            address = f"127.0.0.1:{server.grpc_port}"
            if present:
                assert unload_as(address, "") == "UNAUTHENTICATED"
                assert unload_as(address, token) == "OK"
            else:
                # No tokens file: nobody may load or unload, a token changes nothing.
                assert unload_as(address, token) == "PERMISSION_DENIED"
        finally:
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(30) == 0
