"""A set of file writes in one model folder that is committed or rolled back as a whole.

A load with file overrides, or an upload, writes its files before the model loads; if the load
fails, the folder must look as it did before. Each replaced file is first hard-linked to a
`.backup-` name beside it, so rolling back is a rename. A crash before commit leaves those
backups behind; `recover_interrupted` restores them at the next start, because a change that
was never acknowledged to its client must not half-survive.

Several servers may share one repository (replicas on one volume). A change holds an exclusive
POSIX record lock on `<root>/.locks/<model>.lock` from its first write to its commit or
rollback; the kernel drops it when the process dies. Recovery skips a model whose lock another
live process holds: what looks like debris there is a change in progress.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trtserve.server.errors import FailedPrecondition
from trtserve.server.repository.repository import (
    TEMP_PREFIX,
    ModelRepository,
    fsync_dir,
)
from trtserve.server.repository.staging import STAGED_PREFIX, StagedFile, held_by_live_writer
from trtserve.server.repository.write_guards import space_errors

log = logging.getLogger(__name__)

BACKUP_PREFIX = ".backup-"
LOCKS_FOLDER = ".locks"


def _open_lock(repository: ModelRepository, name: str) -> int:
    folder = repository.root / LOCKS_FOLDER
    path = folder / f"{name}.lock"
    for link in (folder, path):  # creating the lock file would follow it out
        if link.is_symlink():
            raise FailedPrecondition(
                f"model '{name}': {link}: expected a real lock folder and file inside the "
                f"repository {repository.root}, received a symbolic link"
            )
    with space_errors(repository.root, f"model '{name}' lock file"):
        folder.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a link made since the check above is refused too (ELOOP).
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


@dataclass
class _Written:
    target: Path
    backup: Path | None


@dataclass
class RepositoryChange:
    """Writes into one model's folder, undone by `rollback` unless `commit` ran."""

    repository: ModelRepository
    name: str
    _written: list[_Written] = field(default_factory=list)
    _folders_before: bool = False
    _lock_fd: int | None = None

    def __post_init__(self) -> None:
        self._folders_before = self.repository.model_dir(self.name).exists()

    def _lock(self) -> None:
        # Taken on the first write (a worker thread: it may wait for another server's change).
        if self._lock_fd is None:
            fd = _open_lock(self.repository, self.repository.model_dir(self.name).name)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    def write_config_json(self, text: str) -> None:
        """Replace the model's config.json."""
        target = self.repository.model_dir(self.name) / "config.json"
        self._replace(target, lambda: self.repository.write_config_json(self.name, text))

    def write_file(self, relative_path: str, data: bytes | StagedFile) -> None:
        """Write `<version>/<file>`, from bytes or by moving a staged upload into place."""
        target = self.repository.file_path(self.name, relative_path)
        if isinstance(data, StagedFile):
            staged = data.path
            self._replace(
                target,
                lambda: self.repository.move_into_place(self.name, relative_path, staged),
            )
        else:
            payload = data
            self._replace(
                target, lambda: self.repository.write_file(self.name, relative_path, payload)
            )

    def commit(self) -> None:
        """Keep the new files; drop the backups (durably: a backup that came back after a
        power loss would be restored over the acknowledged file)."""
        folders: set[Path] = set()
        for written in self._written:
            if written.backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    written.backup.unlink()
                folders.add(written.backup.parent)
        for folder in folders:
            fsync_dir(folder)
        self._written = []
        self._unlock()

    def rollback(self) -> None:
        """Put every replaced file back and remove the new ones (and folders made for them)."""
        for written in reversed(self._written):
            if written.backup is not None:
                os.replace(written.backup, written.target)
                fsync_dir(written.target.parent)
            else:
                with contextlib.suppress(FileNotFoundError):
                    written.target.unlink()
                _remove_empty(written.target.parent)
        self._written = []
        model_dir = self.repository.model_dir(self.name)
        if not self._folders_before:
            _remove_empty(model_dir)
        fsync_dir(model_dir if model_dir.exists() else self.repository.root)
        self._unlock()

    def _replace(self, target: Path, write: Callable[[], object]) -> None:
        self.repository.check_writable(target)
        self._lock()
        backup: Path | None = None
        if target.exists():
            backup = target.with_name(BACKUP_PREFIX + target.name)
            with space_errors(self.repository.root, f"model '{self.name}' backup of {target}"):
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()
                try:
                    os.link(target, backup)
                except OSError:  # a filesystem without hard links: copy instead
                    try:
                        shutil.copy2(target, backup)
                    except BaseException:
                        with contextlib.suppress(FileNotFoundError):
                            backup.unlink()
                        raise
                fsync_dir(target.parent)
        try:
            write()
        except BaseException:
            if backup is not None:
                backup.unlink()
            raise
        self._written.append(_Written(target, backup))


def recover_interrupted(repository: ModelRepository) -> list[Path]:
    """Restore files a crashed change had replaced, drop leftover temporary files, and remove
    version folders the crash left empty (a version folder without a file is no version).

    Models that another live server is changing right now are left alone. Symbolic links are
    never followed: what a link points to is outside what this server wrote.
    """
    restored: list[Path] = []
    if not repository.root.is_dir():
        return restored
    for model in sorted(repository.root.iterdir()):
        if model.name.startswith(".") or not _real_dir(model):
            continue
        try:
            fd = _open_lock(repository, model.name)
        except (OSError, FailedPrecondition) as error:
            # A read-only repository: nothing was written through it.
            log.info("not recovering %s: no lock file (%s)", model, error)
            continue
        try:
            if not _try_lock(fd):
                log.info("not recovering %s: another server is changing it", model)
                continue
            restored += _recover_model(model)
        finally:
            os.close(fd)
    return restored


def _real_dir(path: Path) -> bool:
    """A folder that is not a symbolic link (a linked one is logged and skipped)."""
    if path.is_symlink():
        if path.is_dir():
            log.warning("not recovering %s: a symbolic link to %s", path, os.readlink(path))
        return False
    return stat.S_ISDIR(path.lstat().st_mode)


def _recover_model(model: Path) -> list[Path]:
    restored: list[Path] = []
    removed_staged = False
    for folder in [model, *(v for v in model.iterdir() if _real_dir(v))]:
        for entry in folder.iterdir():
            if not stat.S_ISREG(entry.lstat().st_mode):
                continue  # the repository writes regular files only; links stay as they are
            if entry.name.startswith(BACKUP_PREFIX):
                original = entry.with_name(entry.name.removeprefix(BACKUP_PREFIX))
                if original.exists() and os.path.samefile(entry, original):
                    # The crash came before the new file replaced the original, which is
                    # intact. (Renaming one link of a file over another does nothing, so the
                    # backup would linger and later "restore" over newer edits.)
                    entry.unlink()
                else:
                    os.replace(entry, original)
                    restored.append(original)
                    log.warning("restored %s from an interrupted change", original)
                fsync_dir(folder)
            elif entry.name.startswith(TEMP_PREFIX):
                if entry.name.startswith(STAGED_PREFIX):
                    # Uploads are staged without the model's lock: check the file's own.
                    if held_by_live_writer(entry):
                        continue
                    removed_staged = True
                entry.unlink()
        if folder != model and folder.name.isdigit():
            _remove_empty_logged(folder, model)
    if removed_staged:  # a model folder made for an upload that never finished
        _remove_empty_logged(model, model.parent)
    return restored


def _remove_empty_logged(folder: Path, parent: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: a real version or model
        folder.rmdir()
        fsync_dir(parent)
        log.warning("removed %s, left empty by an interrupted change", folder)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
        fsync_dir(folder.parent)
