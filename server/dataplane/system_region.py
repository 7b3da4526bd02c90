"""A registered system shared-memory region: a POSIX shared-memory object mapped once.

Clients create the object (shm_open, which on Linux is a file under /dev/shm), register a byte
range of it by key, and then pass tensors by naming the region, an offset and a size. The
server maps the range at registration and hands out numpy views of it: no copy per request.
When a GPU is present the mapping is pinned, so copies to and from the GPU run at full speed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtserve.server.errors import InvalidArgument, NotFound
from trtserve.server.runtime.host_pinning import PINNED

SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class SystemRegionStatus:
    """What SystemSharedMemoryStatus reports for one region."""

    name: str
    key: str
    offset: int
    byte_size: int


def object_name(region: str, key: str) -> str:
    """The shared-memory object's file name for a key as shm_open takes it ("/name").

    Only a plain name is accepted, so that no key reaches a file outside the directory.
    """
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument(
            f"shared-memory region '{region}': key: expected a shared-memory object name "
            f"such as '/my_region' (one leading '/' at most, no other '/'), received {key!r}"
        )
    return name


class SystemRegion:
    """A mapped byte range [offset, offset + byte_size) of one shared-memory object."""

    def __init__(
        self, name: str, key: str, offset: int, byte_size: int, directory: Path = SHM_DIR
    ) -> None:
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        path = directory / object_name(name, key)
        self._fd = _open_object(name, key, path)
        try:
            _check_size(name, key, self._fd, offset, byte_size)
            # mmap offsets must be page-aligned: map from the page holding `offset`.
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._map = mmap.mmap(
                self._fd, offset + byte_size - start, mmap.MAP_SHARED, offset=start
            )
        except BaseException:
            os.close(self._fd)
            raise
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)[offset - start :]
        self.pinned = PINNED.pin(self._bytes.ctypes.data, byte_size) if byte_size else False

    @property
    def status(self) -> SystemRegionStatus:
        """The region as SystemSharedMemoryStatus reports it."""
        return SystemRegionStatus(self.name, self.key, self.offset, self.byte_size)

    def view(self, offset: int, nbytes: int, field: str) -> np.ndarray:
        """A writable uint8 view of [offset, offset + nbytes) of the region (offsets relative
        to the registered range); InvalidArgument naming `field` when it is out of bounds."""
        check_bounds(self.name, self.byte_size, offset, nbytes, field)
        return self._bytes[offset : offset + nbytes]

    def check_size(self, field: str) -> None:
        """InvalidArgument when the object shrank below the registered range since.

        A client that shrinks the object after registering would make reads of the lost pages
        kill the process (SIGBUS), so every request checks before it uses the region.
        """
        size = os.fstat(self._fd).st_size
        if size < self.offset + self.byte_size:
            raise InvalidArgument(
                f"{field}: shared-memory region '{self.name}': object '{self.key}' shrank to "
                f"{size} bytes after registration; expected at least "
                f"{self.offset + self.byte_size}"
            )

    def close(self) -> None:
        """Unpin and drop the mapping; views still alive keep their pages until collected."""
        if self.pinned:
            PINNED.unpin(self._bytes.ctypes.data)
            self.pinned = False
        del self._bytes
        # Views of the mapping may still be referenced (garbage not yet collected): then the
        # mapping is released with the last of them.
        with contextlib.suppress(BufferError):
            self._map.close()
        os.close(self._fd)


def check_bounds(region: str, size: int, offset: int, nbytes: int, field: str) -> None:
    """InvalidArgument unless [offset, offset + nbytes) lies inside a region of `size` bytes."""
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        raise InvalidArgument(
            f"{field}: shared-memory region '{region}' holds {size} bytes; expected "
            f"offset + byte size within it, received offset {offset} + byte size {nbytes} "
            f"= {offset + nbytes}"
        )


def _open_object(region: str, key: str, path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(
            f"shared-memory region '{region}': no shared-memory object '{key}' on this host "
            f"(looked for {path}); create it before registering"
        ) from None
    except OSError as error:
        raise InvalidArgument(
            f"shared-memory region '{region}': cannot open shared-memory object '{key}': "
            f"{error.strerror}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(
            f"shared-memory region '{region}': '{key}' is not a shared-memory object"
        )
    return fd


def _check_size(region: str, key: str, fd: int, offset: int, byte_size: int) -> None:
    size = os.fstat(fd).st_size
    if byte_size < 1:
        raise InvalidArgument(
            f"shared-memory region '{region}': byte_size: expected at least 1, received {byte_size}"
        )
    if offset + byte_size > size:
        raise InvalidArgument(
            f"shared-memory region '{region}': object '{key}' is {size} bytes; expected "
            f"offset + byte_size within it, received {offset} + {byte_size} = "
            f"{offset + byte_size}"
        )
