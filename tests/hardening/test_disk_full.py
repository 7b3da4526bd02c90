"""A full disk during a repository write: RESOURCE_EXHAUSTED naming the repository, nothing
half-written, the previous version serving.

In process, ENOSPC (and EDQUOT, EFBIG) is injected where a full disk reports it: flushing a
file's data. Over gRPC, a real 512 KiB tmpfs is mounted over the repository in a private mount
namespace (needs root and `unshare`, as CI has; skipped elsewhere).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from served import Served, status_of
from server_process import spawn
from tiny_models import add_config, add_constant_model, add_request, output_of, tree, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.server.errors import ResourceExhausted
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.repository.staging import stage
from trtserve.server.repository.transaction import RepositoryChange

TIMEOUT_S = 30.0
MIB = 1024 * 1024


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    write_model(tmp_path, "m", 1, add_constant_model(1.0))
    return ModelRepository(tmp_path)


def full_disk(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Make flushing any regular file fail with `code`, as a full filesystem does."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
@pytest.mark.parametrize("relative_path", ["1/model.onnx", "2/model.onnx"])
def test_full_disk_during_a_change_leaves_the_folder_as_it_was(
    repository: ModelRepository, monkeypatch: pytest.MonkeyPatch, code: int, relative_path: str
) -> None:
    before = tree(repository.root)
    full_disk(monkeypatch, code)
    change = RepositoryChange(repository, "m")
    with pytest.raises(ResourceExhausted) as raised:
        try:
            change.write_file(relative_path, add_constant_model(2.0))
        except BaseException:
            change.rollback()
            raise
    message = str(raised.value)
    assert f"model 'm' file '{relative_path}'" in message
    assert f"repository {repository.root}" in message and errno.errorcode[code] in message
    assert tree(repository.root) == before


def test_full_disk_during_an_upload_leaves_nothing(
    repository: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(repository.root)
    full_disk(monkeypatch, errno.ENOSPC)
    with pytest.raises(ResourceExhausted, match=re.escape("model 'new' file '1/model.onnx'")):
        stage(repository, "new", "1/model.onnx", [b"x" * 1000], None, MIB)
    assert tree(repository.root) == before


# --- a real full filesystem -------------------------------------------------------------------


def can_mount_tmpfs(folder: Path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Served]:
    repository = tmp_path / "repository"
    repository.mkdir()
    if not can_mount_tmpfs(repository):
        pytest.skip("needs root and unshare -m to mount a small tmpfs")
    source = tmp_path / "source"
    write_model(source, "m", 1, add_constant_model(1.0))
    # The server runs in a mount namespace of its own, where the repository is a small tmpfs.
    script = 'mount -t tmpfs -o size=512k tmpfs "$0" && cp -a "$1"/. "$0"/ && shift && exec "$@"'
    command = [
        "unshare", "-m", "sh", "-c", script, str(repository), str(source),
        sys.executable, "-u", "-m", "trtserve.cli.main", "serve", "--host", "127.0.0.1",
        "--grpc-port", "0", "--metrics-port", "-1", "--insecure-local-admin",
        "--repository", str(repository),
    ]  # fmt: skip
    process = spawn(command, dict(os.environ))
    channel = grpc.insecure_channel(process.address)
    try:
        # The tmpfs as the server sees it.
        yield Served(process, Path(f"/proc/{process.process.pid}/root{repository}"), channel)
    finally:
        channel.close()
        assert process.terminate() == 0


def test_full_filesystem_keeps_the_previous_version_serving(small_disk: Served) -> None:
    before = tree(small_disk.repository)
    assert "m/1/model.onnx" in before
    big = add_constant_model(2.0, pad_bytes=MIB)
    load = pb.RepositoryModelLoadRequest(model_name="m")
    load.parameters["file:2/model.onnx"].bytes_param = big
    load.parameters["config"].string_param = add_config("m")
    header = tpb.UploadHeader(model_name="m", version=3, filename="model.onnx")
    upload = [tpb.UploadRequest(header=header), tpb.UploadRequest(data=big)]
    calls = {
        "load": lambda: small_disk.stub.RepositoryModelLoad(load, timeout=TIMEOUT_S),
        "upload": lambda: small_disk.uploads.UploadModel(iter(upload), timeout=TIMEOUT_S),
    }
    for what, call in calls.items():
        code, message = status_of(call)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (what, message)
        assert "ENOSPC" in message and "repository" in message, message
        assert tree(small_disk.repository) == before, what
        request, x = add_request("m")
        assert (output_of(small_disk.stub.ModelInfer(request, timeout=TIMEOUT_S)) == x + 1).all()
