"""Keep freed memory for reuse: glibc malloc settings for processes that move large tensors.

Every multi-MB message (a request, a response, a tensor copied out of pinned memory) is a fresh
allocation. By default glibc serves allocations over 128 KiB (a limit it raises as they are
freed) with mmap, and hands the top of its heap back to the OS when more than 128 KiB is free,
so the next message faults in fresh zeroed pages. Whether a process settles into reusing its
memory depends on the order of its first allocations: the same bare gRPC server answering
3.2 MB responses ran at about 150 or about 250 requests a second from one start to the next,
spending 6 ms of CPU per request in the slow state against 2 ms. With large messages served
from the heap and up to `keep_bytes` of freed memory kept, it ran at 290 to 360 every time
(benchmarks/README.md has the commands).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit: allocations up to this come from the heap.
HEAP_ALLOCATIONS_UP_TO = 32 << 20
DEFAULT_KEEP_BYTES = 64 << 20
_C_INT_MAX = 2**31 - 1


def reuse_freed_memory(keep_bytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Serve allocations up to 32 MiB from the heap and keep up to `keep_bytes` freed in it.

    Returns whether the allocator took the settings: False for `keep_bytes` 0, and where the C
    library is not glibc (musl, macOS), which have no such settings.
    """
    if not 0 <= keep_bytes <= _C_INT_MAX:
        raise ValueError(f"keep_bytes: expected 0 to {_C_INT_MAX}, received {keep_bytes}")
    if keep_bytes == 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Setting either turns off glibc's own adjustment of both, so both are set.
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_ALLOCATIONS_UP_TO)) and bool(
        mallopt(_M_TRIM_THRESHOLD, keep_bytes)
    )


def release_freed_memory() -> bool:
    """Give the free pages inside the C heap back to the OS (glibc's malloc_trim).

    Millions of small objects freed together leave holes in the heap that the top-of-heap trim
    never returns: 2 M one-byte BYTES elements decoded and encoded again kept 40 MiB resident.
    Runs without the interpreter lock (ctypes releases it). False where the C library is not
    glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
