"""Repository changes: all-or-nothing writes, and recovery after a crash mid-change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtserve.server.errors import InvalidArgument
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.repository.staging import stage
from trtserve.server.repository.transaction import (
    LOCKS_FOLDER,
    RepositoryChange,
    recover_interrupted,
)


def listing(root: Path) -> dict[str, bytes]:
    """Every file's content, but the lock files (they stay, empty, once a model was changed)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and LOCKS_FOLDER not in p.relative_to(root).parts
    }


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.json").write_text('{"name": "m"}')
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"old model")
    return ModelRepository(tmp_path)


def test_rollback_restores_replaced_and_removes_new_files(repository: ModelRepository) -> None:
    before = listing(repository.root)
    change = RepositoryChange(repository, "m")
    change.write_config_json('{"name": "m", "max_batch_size": 4}')
    change.write_file("1/model.onnx", b"new model")
    change.write_file("2/model.onnx", b"second version")
    assert (repository.root / "m" / "2" / "model.onnx").read_bytes() == b"second version"
    change.rollback()
    assert listing(repository.root) == before
    assert not (repository.root / "m" / "2").exists()


def test_commit_keeps_new_files_and_leaves_no_backup(repository: ModelRepository) -> None:
    change = RepositoryChange(repository, "m")
    change.write_file("1/model.onnx", b"new model")
    change.commit()
    assert listing(repository.root) == {
        "m/1/model.onnx": b"new model",
        "m/config.json": b'{"name": "m"}',
    }


def test_rollback_of_a_new_model_removes_its_folder(repository: ModelRepository) -> None:
    change = RepositoryChange(repository, "fresh")
    change.write_config_json('{"name": "fresh"}')
    change.write_file("1/model.onnx", b"bytes")
    change.rollback()
    assert not (repository.root / "fresh").exists()


def test_failed_upload_leaves_the_old_file(repository: ModelRepository) -> None:
    with pytest.raises(InvalidArgument, match="sha256"):
        stage(repository, "m", "1/model.onnx", iter([b"new ", b"model"]), "0" * 64, 100)
    assert listing(repository.root)["m/1/model.onnx"] == b"old model"
    assert not any(".tmp-" in name or ".backup-" in name for name in listing(repository.root))


def test_staged_upload_records_size_and_digest_and_moves_into_place(
    repository: ModelRepository,
) -> None:
    staged = stage(repository, "m", "3/model.onnx", iter([b"abc", b"def"]), None, 100)
    change = RepositoryChange(repository, "m")
    change.write_file("3/model.onnx", staged)
    change.commit()
    staged.discard()
    assert staged.size == 6
    assert staged.sha256 == "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
    files = listing(repository.root)
    assert files["m/3/model.onnx"] == b"abcdef"
    assert not any(".tmp-" in name for name in files)


def test_recovery_restores_a_change_interrupted_before_commit(
    repository: ModelRepository,
) -> None:
    before = listing(repository.root)
    change = RepositoryChange(repository, "m")
    change.write_file("1/model.onnx", b"never acknowledged")
    # A crash here: neither commit nor rollback ran. A temporary file was left too.
    (repository.root / "m" / "1" / ".tmp-model.onnx.abc").write_bytes(b"partial")
    restored = recover_interrupted(repository)
    assert restored == [repository.root / "m" / "1" / "model.onnx"]
    assert listing(repository.root) == before


def test_backup_is_a_hard_link_not_a_copy(repository: ModelRepository) -> None:
    target = repository.root / "m" / "1" / "model.onnx"
    inode = os.stat(target).st_ino
    RepositoryChange(repository, "m").write_file("1/model.onnx", b"new")
    assert os.stat(target.with_name(".backup-model.onnx")).st_ino == inode
