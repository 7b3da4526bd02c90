"""Start-up recovery after a crash at each point of a repository change (found by SIGKILL runs)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtserve.server.repository.repository import ModelRepository
from trtserve.server.repository.staging import STAGED_PREFIX
from trtserve.server.repository.transaction import (
    BACKUP_PREFIX,
    LOCKS_FOLDER,
    recover_interrupted,
)


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"version 1")
    (tmp_path / "m" / "config.json").write_text('{"platform": "onnxruntime_onnx"}')
    return ModelRepository(tmp_path)


def test_backup_linked_before_the_crash_is_dropped_not_restored(
    repository: ModelRepository,
) -> None:
    """Crash between linking the backup and replacing the file: both are one inode."""
    config = repository.root / "m" / "config.json"
    backup = config.with_name(BACKUP_PREFIX + config.name)
    os.link(config, backup)
    assert recover_interrupted(repository) == []
    assert not backup.exists()
    # An operator's later edit (a new file renamed in place) survives the next start.
    edited = config.with_name("config.json.new")
    edited.write_text('{"platform": "onnxruntime_onnx", "max_batch_size": 4}')
    os.replace(edited, config)
    recover_interrupted(repository)
    assert "max_batch_size" in config.read_text()


def test_backup_of_a_replaced_file_is_restored(repository: ModelRepository) -> None:
    """Crash after the new file replaced the original, before commit."""
    target = repository.root / "m" / "1" / "model.onnx"
    backup = target.with_name(BACKUP_PREFIX + target.name)
    os.link(target, backup)
    fresh = target.with_name(".tmp-model.onnx.x")
    fresh.write_bytes(b"never acknowledged")
    os.replace(fresh, target)
    assert recover_interrupted(repository) == [target]
    assert target.read_bytes() == b"version 1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]


def test_version_folder_left_empty_is_removed(repository: ModelRepository) -> None:
    """Crash after the version folder was made, before (or while) its file was written."""
    empty = repository.root / "m" / "2"
    empty.mkdir()
    partial = repository.root / "m" / "3"
    partial.mkdir()
    (partial / ".tmp-model.onnx.abc").write_bytes(b"half a fi")
    recover_interrupted(repository)
    assert repository.versions("m") == [1]
    assert (repository.root / "m" / "1" / "model.onnx").read_bytes() == b"version 1"


def test_names_that_hide_like_temporaries_are_refused() -> None:
    """A model or file name may not start with '.', so no upload can pass for a backup."""
    from trtserve.server.repository.model_config import is_plain_name

    for name in (".backup-model.onnx", ".tmp-model.onnx.abc", ".hidden", ".", ".."):
        assert not is_plain_name(name), name
    assert is_plain_name("model.v2.onnx")


def test_model_another_live_server_is_changing_is_left_alone(
    repository: ModelRepository,
) -> None:
    """Replicas share a volume: a starting server must not 'recover' another's change."""
    version = repository.root / "m" / "2"
    version.mkdir()
    in_progress = version / ".tmp-model.onnx.abc"
    in_progress.write_bytes(b"arriving")
    with lock_held_elsewhere(repository.root / LOCKS_FOLDER / "m.lock"):
        recover_interrupted(repository)
        assert in_progress.read_bytes() == b"arriving"
    recover_interrupted(repository)
    assert not version.exists()


HOLD_LOCK = """
import fcntl, os, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process holds a POSIX lock on `path` for the duration (a live server)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.communicate("")  # the holder exits: the kernel drops its lock


def test_upload_staged_by_a_live_server_is_left_alone(repository: ModelRepository) -> None:
    """Uploads are staged without the model's lock; the staged file's own lock tells."""
    model = repository.root / "new"
    model.mkdir()
    staged = model / f"{STAGED_PREFIX}1-model.onnx.abc"
    staged.write_bytes(b"arriving")
    with lock_held_elsewhere(staged):
        recover_interrupted(repository)
        assert staged.read_bytes() == b"arriving"
    # Its writer is gone: the file and the model folder made for it go.
    recover_interrupted(repository)
    assert not model.exists()
    assert (repository.root / "m" / "1" / "model.onnx").read_bytes() == b"version 1"
