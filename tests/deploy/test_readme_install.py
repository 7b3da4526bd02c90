"""The README's installs, in its order, into a fresh virtual environment: the server extra,
then tritonclient[grpc,http] as the client section says. The server must still start after both
(pip once downgraded protobuf under grpcio-health-checking here, and the server died).

Downloads from the package index; runs with TRTSERVE_TEST_NETWORK=1."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("TRTSERVE_TEST_NETWORK") != "1",
    reason="installs from the package index; set TRTSERVE_TEST_NETWORK=1",
)


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_server_then_tritonclient_leaves_a_server_that_starts(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"{ROOT}[server]")
    run(python, "-m", "pip", "install", "-q", "tritonclient[grpc,http]")
    run(python, "-m", "pip", "check")
    # What `trtserve serve` imports, the generated code of every gRPC service included; and
    # tritonclient in a process of its own (one process cannot import both, see README).
    started = run(
        python,
        "-c",
        "import grpc_health.v1.health_pb2, grpc_reflection.v1alpha.reflection, "
        "trtserve.server.app; print('ok')",
    )
    assert started.stdout.strip() == "ok"
    run(python, "-c", "import tritonclient.grpc")
    served = run(env / "bin" / "trtserve", "serve", "--help")
    assert "--repository" in served.stdout
