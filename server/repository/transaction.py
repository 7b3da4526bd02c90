"""A set of file writes in one model folder that is committed or rolled back as a whole.

A load with file overrides, or an upload, writes its files before the model loads; if the load
fails, the folder must look as it did before. Each replaced file is first hard-linked to a
`.backup-` name beside it, so rolling back is a rename. A crash before commit leaves those
backups behind; `recover_interrupted` restores them at the next start, because a change that
was never acknowledged to its client must not half-survive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trtserve.server.repository.repository import (
    TEMP_PREFIX,
    ModelRepository,
    fsync_dir,
)

log = logging.getLogger(__name__)

BACKUP_PREFIX = ".backup-"


@dataclass
class StreamedFile:
    """A file that arrives in chunks (an upload); size and sha256 are known once written."""

    chunks: Iterable[bytes]
    expected_sha256: str | None
    max_bytes: int
    size: int = 0
    sha256: str = ""


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

    def __post_init__(self) -> None:
        self._folders_before = self.repository.model_dir(self.name).exists()

    def write_config_json(self, text: str) -> None:
        """Replace the model's config.json."""
        target = self.repository.model_dir(self.name) / "config.json"
        self._replace(target, lambda: self.repository.write_config_json(self.name, text))

    def write_file(self, relative_path: str, data: bytes | StreamedFile) -> None:
        """Write `<version>/<file>`, from bytes or from a stream of chunks."""
        target = self.repository.file_path(self.name, relative_path)
        if isinstance(data, StreamedFile):
            stream = data

            def write() -> None:
                stream.size, stream.sha256 = self.repository.write_stream(
                    self.name, relative_path, stream.chunks, stream.expected_sha256,
                    stream.max_bytes,
                )  # fmt: skip

            self._replace(target, write)
        else:
            payload = data
            self._replace(
                target, lambda: self.repository.write_file(self.name, relative_path, payload)
            )

    def commit(self) -> None:
        """Keep the new files; drop the backups."""
        for written in self._written:
            if written.backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    written.backup.unlink()
        self._written = []

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

    def _replace(self, target: Path, write: Callable[[], object]) -> None:
        backup: Path | None = None
        if target.exists():
            backup = target.with_name(BACKUP_PREFIX + target.name)
            with contextlib.suppress(FileNotFoundError):
                backup.unlink()
            try:
                os.link(target, backup)
            except OSError:  # a filesystem without hard links: copy instead
                shutil.copy2(target, backup)
            fsync_dir(target.parent)
        try:
            write()
        except BaseException:
            if backup is not None:
                backup.unlink()
            raise
        self._written.append(_Written(target, backup))


def recover_interrupted(repository: ModelRepository) -> list[Path]:
    """Restore files a crashed change had replaced and drop leftover temporary files."""
    restored: list[Path] = []
    if not repository.root.is_dir():
        return restored
    for folder in _model_folders(repository.root):
        for entry in folder.iterdir():
            if entry.name.startswith(BACKUP_PREFIX):
                original = entry.with_name(entry.name.removeprefix(BACKUP_PREFIX))
                os.replace(entry, original)
                fsync_dir(folder)
                restored.append(original)
                log.warning("restored %s from an interrupted change", original)
            elif entry.name.startswith(TEMP_PREFIX) and entry.is_file():
                entry.unlink()
    return restored


def _model_folders(root: Path) -> Iterable[Path]:
    for model in root.iterdir():
        if model.is_dir():
            yield model
            yield from (v for v in model.iterdir() if v.is_dir())


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
        fsync_dir(folder.parent)
