"""The other process of the CUDA IPC test: it owns GPU memory and exports a handle to it.

Runs in a spawned interpreter (test_shared_memory_gpu.py). It receives bytes, copies them into
a fresh cudaMalloc allocation on device 0, sends back the allocation's 64-byte
cudaIpcMemHandle_t, and keeps the memory alive until told to free it.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any


def export(conn: Connection) -> None:
    """Serve one allocation: payload in, handle out, then wait for "free"."""
    import numpy as np
    from cuda.bindings import runtime as cudart

    def ok(result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        assert int(err) == 0, f"CUDA error {err}"
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    payload: bytes = conn.recv()
    ok(cudart.cudaSetDevice(0))
    address = ok(cudart.cudaMalloc(len(payload)))
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    source = np.frombuffer(payload, dtype=np.uint8)
    ok(cudart.cudaMemcpy(address, source.ctypes.data, source.nbytes, kind))
    handle = ok(cudart.cudaIpcGetMemHandle(address))
    conn.send(bytes(handle.reserved))
    assert conn.recv() == "free"
    ok(cudart.cudaFree(address))
    conn.send("freed")
