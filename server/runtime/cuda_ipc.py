"""GPU memory another process exported with cudaIpcGetMemHandle, opened in this one."""

from __future__ import annotations

from dataclasses import dataclass

from trtserve.server.errors import FailedPrecondition


@dataclass(frozen=True)
class IpcMemory:
    """An opened IPC handle: `nbytes` usable from `address` on CUDA device `device_id`."""

    device_id: int
    address: int
    nbytes: int


def open_ipc_memory(raw_handle: bytes, device_id: int) -> IpcMemory:
    """Open a cudaIpcMemHandle_t's 64 bytes on `device_id`."""
    raise FailedPrecondition("CUDA shared memory needs a GPU; this server sees none")


def close_ipc_memory(memory: IpcMemory) -> None:
    """Close an opened handle."""
