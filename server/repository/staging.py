"""Uploads are received into a hidden file of their model's folder before any lock is taken.

A client paces its upload stream, so receiving it must not hold the model's lock (unload and
reload would wait on the client) nor the repository's POSIX lock (other servers would). The
staged file is moved into place by a RepositoryChange once it is complete and verified.

While it is written the staged file holds a POSIX lock of its own: start-up recovery of another
server sharing the repository leaves a locked one alone and removes one whose writer died.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trtserve.server.repository.repository import (
    TEMP_PREFIX,
    ModelRepository,
    check_relative_path,
    check_sha256,
    remove_folders,
    write_chunks,
)
from trtserve.server.repository.write_guards import space_errors

STAGED_PREFIX = f"{TEMP_PREFIX}upload-"


@dataclass
class StagedFile:
    """A complete, verified upload waiting in its model folder to be moved into place."""

    path: Path
    size: int
    sha256: str
    # Open and locked until discarded, so recovery elsewhere knows its writer is alive.
    _fd: int
    _created: list[Path]

    def discard(self) -> None:
        """Remove the file unless it was moved into place, and folders made only for it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove_folders(self._created)


def stage(
    repository: ModelRepository,
    name: str,
    relative_path: str,
    chunks: Iterable[bytes],
    expected_sha256: str | None,
    max_bytes: int,
) -> StagedFile:
    """Write an upload of `<version>/<file>` into a locked temporary file of the model folder.

    Over `max_bytes`, a digest other than `expected_sha256` or a full disk raise and leave
    nothing behind.
    """
    what = f"model '{name}' file '{relative_path}'"
    check_relative_path(relative_path)
    check_sha256(what, expected_sha256)
    folder = repository.model_dir(name)
    repository.check_writable(folder)
    with space_errors(repository.root, what):
        created = repository.make_dirs(folder)
        try:
            fd, temp = tempfile.mkstemp(
                dir=folder, prefix=f"{STAGED_PREFIX}{relative_path.replace('/', '-')}."
            )
        except BaseException:
            remove_folders(created)
            raise
        staged = StagedFile(Path(temp), 0, "", fd, created)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.fchmod(fd, 0o644)
            with open(fd, "wb", closefd=False) as f:
                staged.size, staged.sha256 = write_chunks(
                    f, chunks, expected_sha256, max_bytes, what
                )
        except BaseException:
            staged.discard()
            raise
    return staged


def held_by_live_writer(path: Path) -> bool:
    """Whether a staged file's writer (this or another process) still holds its lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock just taken
    return False
