"""System (POSIX) shared-memory regions, to pass tensors to the server by reference::

    from trtserve.client.shared_memory import SystemSharedMemoryRegion

    with SystemSharedMemoryRegion.create("in", "/in", 1 << 20) as region:
        client.register_system_shared_memory(region.name, region.key, region.byte_size)
        x = region.write_input("INPUT0", array)              # written at offset 0
        y = region.output_reference("OUTPUT0", array.nbytes, offset=4096)
        result = client.infer("simple", [x, ...], [y])
        meta = result.shared_memory_outputs["OUTPUT0"]
        out = region.read(meta.datatype, meta.shape, offset=4096)
        client.unregister_system_shared_memory(region.name)

A region is a file under /dev/shm mapped into this process: what shm_open("/in") opens, as
tritonclient's utilities name it. Leaving the `with` block unmaps the region and removes the
object (`destroy`); one opened with `attach` is only unmapped. Python's
multiprocessing.shared_memory is not used: its resource tracker removes objects at exit.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from trtserve.client.request import tensor_bytes
from trtserve.client.types import SharedMemoryInput, SharedMemoryOutput
from trtserve.protocol.bytes_elements import split_elements
from trtserve.protocol.datatypes import from_name
from trtserve.protocol.tensors import element_count

SHM_DIR = Path("/dev/shm")
_KEY = re.compile(r"/[^/\x00]{1,254}")
_LENGTH = struct.Struct("<I")


class Region(ABC):
    """A shared-memory region of `byte_size` bytes that holds tensors at byte offsets.

    `name` is the name the region is registered under with the server. Arrays are written in
    their raw wire form (little-endian, C order; BYTES as length-prefixed elements) and read
    back as copies. Spans outside the region raise ValueError.
    """

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size

    @abstractmethod
    def _put(self, offset: int, data: memoryview) -> None:
        """Copy `data` into the region at `offset` (span checked)."""

    @abstractmethod
    def _get(self, offset: int, nbytes: int) -> np.ndarray:
        """A copy of `nbytes` bytes at `offset` (span checked), as a uint8 array."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether the region can no longer be read or written."""

    def _check_span(self, offset: int, nbytes: int) -> None:
        if self.closed:
            raise ValueError(f"shared-memory region '{self.name}' is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.byte_size:
            raise ValueError(
                f"shared-memory region '{self.name}': {nbytes} bytes at offset {offset} do "
                f"not fit in its {self.byte_size} bytes"
            )

    def write(self, array: np.ndarray, offset: int = 0, datatype: str | None = None) -> int:
        """Write `array` as `datatype` (default: its own) at `offset`; the bytes written."""
        data, _ = tensor_bytes("array", array, datatype)
        self._check_span(offset, data.nbytes)
        self._put(offset, data)
        return data.nbytes

    def read(self, datatype: str, shape: Sequence[int], offset: int = 0) -> np.ndarray:
        """A copy of the tensor of `datatype` and `shape` stored at `offset`."""
        dt = from_name(datatype)
        count = element_count(shape)
        if dt.name == "BYTES":
            return self._read_bytes(count, offset).reshape(tuple(shape))
        nbytes = count * dt.dtype.itemsize
        self._check_span(offset, nbytes)
        raw = self._get(offset, nbytes)
        little = raw.view(dt.dtype.newbyteorder("<"))
        return little.astype(dt.dtype, copy=False).reshape(tuple(shape))

    def _read_bytes(self, count: int, offset: int) -> np.ndarray:
        """`count` length-prefixed elements from `offset` on: their lengths, then them."""
        self._check_span(offset, 0)
        end = offset
        for i in range(count):
            if end + 4 > self.byte_size:
                raise ValueError(
                    f"shared-memory region '{self.name}': BYTES element {i} of {count} at "
                    f"offset {end} runs past the region's end"
                )
            end += 4 + _LENGTH.unpack_from(self._get(end, 4).tobytes())[0]
        if end > self.byte_size:
            raise ValueError(
                f"shared-memory region '{self.name}': the {count} BYTES elements at offset "
                f"{offset} run past the region's end"
            )
        return split_elements("array", self._get(offset, end - offset).tobytes(), count)

    def write_input(
        self, name: str, array: np.ndarray, offset: int = 0, datatype: str | None = None
    ) -> SharedMemoryInput:
        """Write `array` at `offset`; the input `name` that references it."""
        data, resolved = tensor_bytes(name, array, datatype)
        self._check_span(offset, data.nbytes)
        self._put(offset, data)
        shape = tuple(int(d) for d in np.shape(array))
        return SharedMemoryInput(name, resolved, shape, self.name, data.nbytes, offset)

    def output_reference(self, name: str, byte_size: int, offset: int = 0) -> SharedMemoryOutput:
        """The requested output `name`, to be written into `byte_size` bytes at `offset`."""
        self._check_span(offset, byte_size)
        return SharedMemoryOutput(name, self.name, byte_size, offset)


class SystemSharedMemoryRegion(Region):
    """A POSIX shared-memory object mapped into this process (see the module's docstring)."""

    def __init__(self, name: str, key: str, mapping: mmap.mmap, owner: bool) -> None:
        super().__init__(name, len(mapping))
        self.key = key
        self._mmap: mmap.mmap | None = mapping
        self._owner = owner

    @staticmethod
    def path_of(key: str) -> Path:
        """The file of object `key` ("/name" -> /dev/shm/name); ValueError for a bad key."""
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"shared-memory key {key!r} must be '/' and a name of 1 to 254 characters "
                "without '/'"
            )
        return SHM_DIR / key[1:]

    @classmethod
    def create(cls, name: str, key: str, byte_size: int) -> Self:
        """Create object `key` of `byte_size` bytes (FileExistsError if it exists) and map it.

        The object is readable and writable by this user only (0600).
        """
        if byte_size <= 0:
            raise ValueError(f"byte_size must be positive, received {byte_size}")
        path = cls.path_of(key)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, byte_size)
            mapping = mmap.mmap(fd, byte_size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(name, key, mapping, owner=True)

    @classmethod
    def attach(cls, name: str, key: str) -> Self:
        """Map the existing object `key`, whole; closing it leaves the object in place."""
        fd = os.open(cls.path_of(key), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"shared-memory object {key!r} is empty")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, key, mapping, owner=False)

    @property
    def path(self) -> Path:
        """The object's file under /dev/shm."""
        return self.path_of(self.key)

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def _put(self, offset: int, data: memoryview) -> None:
        assert self._mmap is not None
        self._mmap[offset : offset + data.nbytes] = data

    def _get(self, offset: int, nbytes: int) -> np.ndarray:
        assert self._mmap is not None
        with memoryview(self._mmap) as whole:
            view = np.frombuffer(whole, dtype=np.uint8, count=nbytes, offset=offset)
            out = view.copy()
            del view  # the memoryview is released only once nothing exports it
        return out

    def close(self) -> None:
        """Unmap the region (the object stays); closing twice is harmless."""
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def destroy(self) -> None:
        """Unmap the region and remove the object (already gone is harmless)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owner:
            self.destroy()
        else:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.byte_size} bytes"
        return f"SystemSharedMemoryRegion({self.name!r}, key={self.key!r}, {state})"
