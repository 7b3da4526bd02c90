"""Pinned host ranges, CUDA IPC mappings and host/device copies, against fake CUDA runtimes.

The real calls run in tests/gpu/test_shared_memory_gpu.py; here "GPU memory" is host memory.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field

import numpy as np
import pytest

from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.runtime import cuda_copies, cuda_device, cuda_ipc, host_pinning
from trtserve.server.runtime.cuda_copies import device_to_host, host_to_device
from trtserve.server.runtime.cuda_ipc import IpcMemory, close_ipc_memory, open_ipc_memory
from trtserve.server.runtime.host_pinning import PinnedHostRanges
from trtserve.server.runtime.tensor_buffers import DeviceArray, DeviceMemory

_INVALID_VALUE = 1


class _Kinds:
    cudaMemcpyHostToDevice = "h2d"
    cudaMemcpyDeviceToHost = "d2h"


class _Handle:
    reserved = b""


@dataclass
class FakeCudart:
    devices: int = 1
    refuse_register: bool = False
    cudaHostRegisterPortable: int = 1
    cudaIpcMemLazyEnablePeerAccess: int = 1
    cudaMemcpyKind: type = _Kinds
    cudaIpcMemHandle_t: type = _Handle
    registered: list[tuple[int, int]] = field(default_factory=list)
    unregistered: list[int] = field(default_factory=list)
    opened: list[tuple[int, bytes]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    current: int = 0

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return 0, self.devices

    def cudaGetDevice(self) -> tuple[int, int]:
        return 0, self.current

    def cudaSetDevice(self, device: int) -> tuple[int]:
        self.current = device
        return (0,)

    def cudaHostRegister(self, address: int, nbytes: int, flags: int) -> tuple[int]:
        if self.refuse_register:
            return (_INVALID_VALUE,)
        self.registered.append((address, nbytes))
        return (0,)

    def cudaHostUnregister(self, address: int) -> tuple[int]:
        self.unregistered.append(address)
        return (0,)

    def cudaIpcOpenMemHandle(self, handle: _Handle, flags: int) -> tuple[int, int]:
        self.opened.append((self.current, handle.reserved))
        return 0, 0x7000_0000 + 0x1000 * len(self.opened)

    def cudaIpcCloseMemHandle(self, address: int) -> tuple[int]:
        self.closed.append(address)
        return (0,)

    def cudaMemcpy(self, dst: int, src: int, n: int, kind: str) -> tuple[int]:
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    fake = FakeCudart()
    monkeypatch.setattr(cuda_device, "cudart", lambda: fake)
    for module in (host_pinning, cuda_ipc, cuda_copies):
        monkeypatch.setattr(module, "cudart", lambda: fake)
        monkeypatch.setattr(module, "cuda_device_count", lambda: fake.devices)
    return fake


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_device, "cudart", lambda: None)
    for module in (host_pinning, cuda_ipc, cuda_copies):
        monkeypatch.setattr(module, "cudart", lambda: None)
        monkeypatch.setattr(module, "cuda_device_count", lambda: 0)


def test_contains_only_ranges_inside_one_pinned_range(rt: FakeCudart) -> None:
    ranges = PinnedHostRanges()
    assert ranges.pin(1000, 100) and ranges.pin(2000, 50)
    assert ranges.contains(1000, 100)
    assert ranges.contains(1050, 50)
    assert ranges.contains(2010, 40)
    assert not ranges.contains(999, 2)
    assert not ranges.contains(1050, 51)
    assert not ranges.contains(1100, 1)
    assert not ranges.contains(1500, 10)
    assert not ranges.contains(1090, 1000)
    assert not ranges.contains(10, 5)


def test_unpin_releases_the_range_and_only_a_pinned_one(rt: FakeCudart) -> None:
    ranges = PinnedHostRanges()
    ranges.pin(1000, 100)
    ranges.unpin(5000)
    assert rt.unregistered == []
    ranges.unpin(1000)
    assert rt.unregistered == [1000]
    assert not ranges.contains(1000, 10)


def test_a_range_pinned_twice_is_registered_once_and_held_until_the_last_unpin(
    rt: FakeCudart,
) -> None:
    ranges = PinnedHostRanges()
    assert ranges.pin(1000, 100) and ranges.pin(1000, 100)
    assert rt.registered == [(1000, 100)]
    ranges.unpin(1000)
    assert ranges.contains(1000, 100) and rt.unregistered == []
    ranges.unpin(1000)
    assert not ranges.contains(1000, 100) and rt.unregistered == [1000]


def test_a_refused_range_is_not_pinned_and_warned_about(
    rt: FakeCudart, caplog: pytest.LogCaptureFixture
) -> None:
    rt.refuse_register = True
    ranges = PinnedHostRanges()
    with caplog.at_level(logging.WARNING):
        assert not ranges.pin(1000, 100)
    assert "could not pin 100 bytes" in caplog.text
    assert not ranges.contains(1000, 10)


def test_without_cuda_nothing_is_pinned_and_nothing_raised(no_cuda: None) -> None:
    ranges = PinnedHostRanges()
    assert not ranges.pin(1000, 100)
    assert not ranges.contains(1000, 10)
    ranges.unpin(1000)


def test_ipc_handle_of_the_wrong_size_names_both_sizes(rt: FakeCudart) -> None:
    with pytest.raises(InvalidArgument, match=r"expected 64 bytes.*received 63"):
        open_ipc_memory(bytes(63), 0)


def test_ipc_on_a_missing_device_names_how_many_exist(rt: FakeCudart) -> None:
    rt.devices = 2
    with pytest.raises(InvalidArgument, match=r"device 2 does not exist.*sees 2 device"):
        open_ipc_memory(bytes(64), 2)
    with pytest.raises(InvalidArgument, match="device -1 does not exist"):
        open_ipc_memory(bytes(64), -1)


def test_ipc_without_a_gpu_is_a_failed_precondition(no_cuda: None) -> None:
    with pytest.raises(FailedPrecondition, match="needs a GPU; this server sees none"):
        open_ipc_memory(bytes(64), 0)


def test_one_handle_opened_twice_shares_one_mapping(
    rt: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cuda_ipc, "_bytes_to_end", lambda address: 4096)
    rt.devices = 2
    raw = bytes([0, 1, 0, 255] * 16)
    first = open_ipc_memory(raw, 1)
    second = open_ipc_memory(raw, 1)
    other = open_ipc_memory(bytes(64), 1)
    assert first == second == IpcMemory(1, 0x7000_1000, 4096)
    assert other.address != first.address
    assert rt.opened == [(1, raw), (1, bytes(64))]
    assert rt.current == 0, "the previous device is current again"
    close_ipc_memory(first)
    assert rt.closed == []
    close_ipc_memory(second)
    assert rt.closed == [first.address]
    close_ipc_memory(other)
    assert rt.closed == [first.address, other.address]


def test_copies_round_trip(rt: FakeCudart) -> None:
    memory = np.zeros(64, np.uint8)
    data = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]  # not contiguous
    host_to_device(data, DeviceMemory(0, memory.ctypes.data, memory.nbytes))
    back = device_to_host(DeviceArray(0, memory.ctypes.data, np.dtype(np.int32), (3, 2)))
    assert np.array_equal(back, data)


def test_host_to_device_refuses_data_larger_than_the_target(rt: FakeCudart) -> None:
    with pytest.raises(InvalidArgument, match="16 bytes do not fit the 12 bytes"):
        host_to_device(np.zeros(4, np.int32), DeviceMemory(0, 1, 12))


def test_copies_without_a_gpu_are_a_failed_precondition(no_cuda: None) -> None:
    with pytest.raises(FailedPrecondition, match="needs a GPU"):
        device_to_host(DeviceArray(0, 1, np.dtype(np.int32), (1,)))
    with pytest.raises(FailedPrecondition, match="needs a GPU"):
        host_to_device(np.zeros(1, np.int32), DeviceMemory(0, 1, 4))
