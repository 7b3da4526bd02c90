"""Keeping freed memory: large messages stop faulting in fresh pages (counted, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trtserve.protocol.allocator import reuse_freed_memory

# A request/response cycle's allocations, 100 times, in a fresh interpreter: a 3.2 MB tensor, a
# 0.6 MB one, their bytes, and small objects that outlive them (as protobuf and gRPC leave).
CYCLES = """
import resource, sys
import numpy as np
from trtserve.protocol.allocator import reuse_freed_memory
taken = reuse_freed_memory() if sys.argv[1] == "keep" else False
big = np.ones(800_000, dtype=np.float32)
mid = np.ones(150_000, dtype=np.float32)
kept = []
def cycle():
    a = big.copy()
    b = mid.copy()
    c = a.tobytes()
    kept.append(bytes(100))
    del a, b, c
    if len(kept) > 10:
        kept.pop(0)
for _ in range(5):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    cycle()
print(taken, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    taken, faults = done.stdout.split()
    return taken == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_kept_memory_removes_the_page_faults_of_large_messages() -> None:
    taken, kept_faults = page_faults("keep")
    if not taken:
        pytest.skip("the C library is not glibc")
    _, default_faults = page_faults("default")
    # 100 cycles of 7 MB: glibc's defaults fault most of it in again every cycle.
    assert default_faults > 100 * 1000
    assert kept_faults < default_faults / 100


def test_zero_keeps_the_defaults() -> None:
    assert reuse_freed_memory(0) is False


@pytest.mark.parametrize("keep_bytes", [-1, 2**31])
def test_out_of_range_is_refused(keep_bytes: int) -> None:
    with pytest.raises(
        ValueError, match=f"keep_bytes: expected 0 to 2147483647, received {keep_bytes}"
    ):
        reuse_freed_memory(keep_bytes)


# A large BYTES tensor decoded and encoded again: millions of small objects freed at once.
HOLES = """
import sys
from trtserve.protocol import tensors
from trtserve.protocol.allocator import release_freed_memory, reuse_freed_memory
def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
reuse_freed_memory()
count = 2_000_000
raw = b"\\x01\\x00\\x00\\x00a" * count
before = rss_kib()
del_me = tensors.serialize_bytes(tensors.deserialize_bytes("x", raw, count))
del del_me
freed = rss_kib()
taken = release_freed_memory()
print(taken, before, freed, rss_kib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_gives_the_freed_objects_memory_back() -> None:
    done = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    taken, before, freed, released = done.stdout.split()
    if taken != "True":
        pytest.skip("the C library is not glibc")
    # The objects' memory stays resident after they are freed, until released.
    assert int(freed) - int(before) > 20_000
    assert int(released) - int(before) < 5_000
