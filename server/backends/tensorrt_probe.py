"""Deserialize a plan in a throw-away child process before the server trusts it in its own.

TensorRT has no validity check for a plan, and some damaged plans (seen on an H100: 4 KiB of
a real plan's engine section zeroed) crash the process that loads them instead of returning an
error. The child does what the server would (deserialize, create an execution context, run one
inference of zeros) and takes any crash; the server then refuses the plan and keeps serving.
It costs about half a second per load (interpreter start, runtime creation). This module is
the parent's side; tensorrt_probe_child is what runs in the child.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from trtserve.server.backends.tensorrt_model import DeserializationFailed
from trtserve.server.errors import FailedPrecondition

# Run as a module in a fresh interpreter: the parent never imports it.
CHILD_MODULE = "trtserve.server.backends.tensorrt_probe_child"
# The child's last stderr line when TensorRT gave no engine, before TensorRT's own words.
SAID_PREFIX = "tensorrt said: "


def probe_plan(
    plan: Path,
    lean_library: Path | None,
    device_id: int,
    timeout_s: float = 120.0,
    *,
    host_code: bool = False,
) -> None:
    """Raise FailedPrecondition unless a child process deserializes `plan` cleanly.

    `lean_library` None means the plan carries its own lean runtime (host code allowed);
    `host_code` allows the plugin library of a plan loaded by a lean runtime. When TensorRT
    gives no engine, the error is DeserializationFailed with TensorRT's words.
    """
    command = [sys.executable, "-m", CHILD_MODULE, str(plan), "--device", str(device_id)]
    if lean_library is not None:
        command += ["--lean", str(lean_library)]
    if host_code:
        command.append("--host-code")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(
            f"{plan}: TensorRT did not finish deserializing it within {timeout_s:.0f} s "
            "in a probe process"
        ) from None
    if done.returncode == 0:
        return
    lines = done.stderr.strip().splitlines()
    if lines and lines[-1].startswith(SAID_PREFIX):
        words = lines[-1].removeprefix(SAID_PREFIX)
        raise DeserializationFailed(f"{plan}: TensorRT could not deserialize it: {words}", words)
    said = lines[-3:]
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise FailedPrecondition(
            f"{plan}: TensorRT crashed ({name}) deserializing it in a probe process; the plan "
            f"is damaged or not for this GPU. {' '.join(said)}".strip()
        )
    raise FailedPrecondition(
        f"{plan}: TensorRT could not deserialize it (probe exit {done.returncode}): "
        + (" ".join(said) or "no message")
    )
