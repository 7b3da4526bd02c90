"""trtserve's client and Triton's tritonclient.grpc in one process, imported in either order:
each answers the same request from the same server alike (test harnesses mix the two)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import numpy as np
first, address = sys.argv[1], sys.argv[2]
if first == "trtserve":
    from trtserve.client import InferenceClient, InferInput
    import tritonclient.grpc as triton
else:
    import tritonclient.grpc as triton
    from trtserve.client import InferenceClient, InferInput
a = np.arange(16, dtype=np.float32).reshape(1, 16)
b = np.ones((1, 16), dtype=np.float32)
with InferenceClient(address) as ours:
    mine = ours.infer("simple", [InferInput("INPUT0", a), InferInput("INPUT1", b)])
theirs = triton.InferenceServerClient(address)
inputs = [triton.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
answer = theirs.infer("simple", inputs)
for name in ("OUTPUT0", "OUTPUT1"):
    assert np.array_equal(mine.as_numpy(name), answer.as_numpy(name)), name
print("equal", mine.as_numpy("OUTPUT0")[0, :3].tolist())
"""


@pytest.mark.parametrize("first", ["trtserve", "tritonclient"])
def test_both_clients_in_one_process(server_address: str, first: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, first, server_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "equal [1.0, 2.0, 3.0]"
