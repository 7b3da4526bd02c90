"""The probe's child process: load a plan as the server would and exit with how it went.

Exit 0: the plan loaded and ran; 3: TensorRT refused it with an error; a signal: it crashed.
See tensorrt_probe, which runs this module and reads its exit.

    python -m trtserve.server.backends.tensorrt_probe_child PLAN [--lean LIBRARY] [--host-code]
        [--device N]

When TensorRT gives no engine, the last line of stderr is SAID_PREFIX and TensorRT's own words.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from trtserve.server.backends.base import Placement
from trtserve.server.backends.tensorrt_model import DeserializationFailed, TensorRTModel
from trtserve.server.backends.tensorrt_probe import SAID_PREFIX
from trtserve.server.errors import ServerError
from trtserve.server.runtime.lean_cache import LeanCache
from trtserve.server.runtime.plan_header import read_plan_header
from trtserve.server.runtime.routing import Route, RouteKind
from trtserve.server.runtime.trust import TrustDecision
from trtserve.server.specs import DeviceKind

# Exit status of a child that refused the plan with an error (as opposed to crashing).
_REFUSED = 3


def _load_and_run(plan: Path, lean: Path | None, host_code: bool, device_id: int) -> int:
    """What the server does with a plan, once: load, one instance, one inference of zeros."""
    data = plan.read_bytes()
    version = read_plan_header(data).version
    cache = LeanCache()
    # The parent decided the plan is trusted before starting this process.
    trusted = TrustDecision(True, "", "trusted by the server that started this probe")
    trust = trusted if host_code or lean is None else None
    if lean is None:
        route, lease = Route(RouteKind.EMBEDDED_LEAN, version, trust=trust), None
    else:
        route = Route(RouteKind.LEAN, version, lean, trust)
        lease = cache.acquire(version, lean)
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
    parser.add_argument(
        "--host-code", action="store_true", help="allow the plan's plugin library to load"
    )
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()
    try:
        status = _load_and_run(args.plan, args.lean, args.host_code, args.device)
    except DeserializationFailed as error:
        print(SAID_PREFIX + error.tensorrt_said.replace("\n", " "), file=sys.stderr)
        status = _REFUSED
    except ServerError as error:
        print(str(error), file=sys.stderr)
        status = _REFUSED
    sys.stderr.flush()
    # Skip interpreter teardown: TensorRT objects must not be destroyed in arbitrary order.
    os._exit(status)


if __name__ == "__main__":
    main()
