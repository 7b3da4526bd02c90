"""Deserialize a plan in a throw-away child process before the server trusts it in its own.

TensorRT has no validity check for a plan, and some damaged plans (seen on an H100: 4 KiB of
a real plan's engine section zeroed) crash the process that loads them instead of returning an
error. The child does what the server would (deserialize, create an execution context, run one
inference of zeros) and takes any crash; the server then refuses the plan and keeps serving.
It costs about half a second per load (interpreter start, runtime creation).

    python -m trtserve.server.backends.tensorrt_probe PLAN [--lean LIBRARY] [--device N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from trtserve.server.errors import FailedPrecondition, ServerError

# Exit status of a child that refused the plan with an error (as opposed to crashing).
_REFUSED = 3


def probe_plan(
    plan: Path, lean_library: Path | None, device_id: int, timeout_s: float = 120.0
) -> None:
    """Raise FailedPrecondition unless a child process deserializes `plan` cleanly.

    `lean_library` None means the plan carries its own lean runtime (host code allowed).
    """
    command = [sys.executable, "-m", __name__, str(plan), "--device", str(device_id)]
    if lean_library is not None:
        command += ["--lean", str(lean_library)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(
            f"{plan}: TensorRT did not finish deserializing it within {timeout_s:.0f} s "
            "in a probe process"
        ) from None
    if done.returncode == 0:
        return
    said = done.stderr.strip().splitlines()[-3:] if done.stderr.strip() else []
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


def _load_and_run(plan: Path, lean: Path | None, device_id: int) -> int:
    """What the server does with a plan, once: load, one instance, one inference of zeros."""
    # Imported here: the parent only runs probes and must not import TensorRT for that, and
    # tensorrt_backend imports this module.
    from trtserve.server.backends.base import Placement
    from trtserve.server.backends.tensorrt_backend import TensorRTModel
    from trtserve.server.runtime.lean_cache import LeanCache
    from trtserve.server.runtime.plan_header import read_plan_header
    from trtserve.server.runtime.routing import Route, RouteKind
    from trtserve.server.specs import DeviceKind

    data = plan.read_bytes()
    version = read_plan_header(data).version
    cache = LeanCache()
    if lean is None:
        route, lease = Route(RouteKind.EMBEDDED_LEAN, version), None
    else:
        route, lease = Route(RouteKind.LEAN, version, lean), cache.acquire(version, lean)
    model = TensorRTModel("probe", plan, data, route, lease, cache, device_id)
    instance = model.create_instance(Placement(DeviceKind.GPU, device_id, 0))
    inputs = {
        name: np.zeros(shape, dtype=dtype)
        for name, (shape, dtype) in model.smallest_inputs(device_id).items()
    }
    outputs = [t.name for t in model.tensors if not t.is_input]
    instance.execute(inputs, outputs)
    model.close()
    return 0


def main() -> None:
    """Child entry point: load and run the plan; the exit status says how it went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--lean", type=Path, help="lean runtime library (none: embedded)")
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()
    try:
        status = _load_and_run(args.plan, args.lean, args.device)
    except ServerError as error:
        print(str(error), file=sys.stderr)
        status = _REFUSED
    sys.stderr.flush()
    # Skip interpreter teardown: TensorRT objects must not be destroyed in arbitrary order.
    os._exit(status)


if __name__ == "__main__":
    main()
