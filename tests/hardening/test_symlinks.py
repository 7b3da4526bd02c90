"""Symbolic links in the repository: start-up recovery and writes never leave it.

A sandbox holds the repository and a folder outside it; links in the repository point out.
The whole sandbox is compared byte for byte before and after each step. Serving a model whose
folder is a link stays allowed (ConfigMap mounts are links).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from served import Served, status_of
from server_process import start_server
from tiny_models import (
    add_config,
    add_constant_model,
    add_request,
    output_of,
    tree,
    write_model,
)

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.server.errors import FailedPrecondition
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.repository.transaction import (
    LOCKS_FOLDER,
    RepositoryChange,
    recover_interrupted,
)

TIMEOUT_S = 30.0
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def debris(folder: Path) -> None:
    """What a crashed change leaves: a temporary file and a backup that differs from its file."""
    (folder / ".tmp-model.onnx.abc").write_bytes(b"outside temporary")
    (folder / ".backup-config.json").write_text("outside backup")
    (folder / ".tmp-upload-1-model.onnx.xyz").write_bytes(b"outside staged upload")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """sandbox/repository (models `evil` -> outside, `real` with version 2 -> outside)."""
    repository = tmp_path / "repository"
    outside = tmp_path / "outside"
    write_model(outside, "evil_target", 1, add_constant_model(5.0))
    (outside / "evil_target" / "config.json").write_text(add_config("evil"))
    debris(outside / "evil_target")
    debris(outside / "evil_target" / "1")
    write_model(repository, "real", 1, add_constant_model(1.0))
    write_model(outside, "v2_holder", 2, add_constant_model(2.0))
    debris(outside / "v2_holder" / "2")
    repository.joinpath("evil").symlink_to(outside / "evil_target")
    repository.joinpath("real", "2").symlink_to(outside / "v2_holder" / "2")
    return tmp_path


@pytest.fixture
def served(sandbox: Path) -> Iterator[Served]:
    before = tree(sandbox)
    process = start_server(["--repository", str(sandbox / "repository")])
    channel = grpc.insecure_channel(process.address)
    try:
        # Start-up recovery followed no link: nothing outside was deleted or overwritten.
        assert tree(sandbox) == before
        yield Served(process, sandbox / "repository", channel)
    finally:
        channel.close()
        assert process.terminate() == 0


def answer(served: Served, model: str) -> float:
    request, x = add_request(model)
    return float((output_of(served.stub.ModelInfer(request, timeout=TIMEOUT_S)) - x)[0, 0])


def test_models_behind_links_are_served(served: Served) -> None:
    assert answer(served, "evil") == 5.0
    assert answer(served, "real") == 2.0


def test_loads_with_files_into_links_are_refused(served: Served, sandbox: Path) -> None:
    before = tree(sandbox)
    model = add_constant_model(9.0)
    attempts = {
        "evil": ({"file:1/model.onnx": model}, str(sandbox / "repository" / "evil")),
        "real": ({"file:2/model.onnx": model}, str(sandbox / "repository" / "real" / "2")),
    }
    for name, (files, path) in attempts.items():
        request = pb.RepositoryModelLoadRequest(model_name=name)
        for key, data in files.items():
            request.parameters[key].bytes_param = data
        request.parameters["config"].string_param = add_config(name)
        code, message = status_of(
            lambda r=request: served.stub.RepositoryModelLoad(r, timeout=TIMEOUT_S)
        )
        assert code == PRECONDITION, message
        assert f"model '{name}'" in message and path in message and "symbolic link" in message
    assert tree(sandbox) == before
    assert answer(served, "evil") == 5.0 and answer(served, "real") == 2.0


def test_uploads_into_links_are_refused(served: Served, sandbox: Path) -> None:
    before = tree(sandbox)
    data = add_constant_model(9.0)
    for name, version in (("evil", 3), ("real", 2)):
        header = tpb.UploadHeader(model_name=name, version=version, filename="model.onnx")
        messages = [tpb.UploadRequest(header=header), tpb.UploadRequest(data=data)]
        code, message = status_of(
            lambda m=messages: served.uploads.UploadModel(iter(m), timeout=TIMEOUT_S)
        )
        assert code == PRECONDITION, message
        assert f"model '{name}'" in message and "symbolic link" in message
    assert tree(sandbox) == before


def test_linked_lock_folder_is_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "m", 1, add_constant_model(1.0))
    (tmp_path / "outside").mkdir()
    (repository / LOCKS_FOLDER).symlink_to(tmp_path / "outside")
    change = RepositoryChange(ModelRepository(repository), "m")
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        change.write_file("1/model.onnx", b"new")
    assert os.listdir(tmp_path / "outside") == []
    assert (repository / "m" / "1" / "model.onnx").read_bytes() == add_constant_model(1.0)


def test_linked_lock_file_is_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "m", 1, add_constant_model(1.0))
    (repository / LOCKS_FOLDER).mkdir()
    target = tmp_path / "outside.txt"
    target.write_bytes(b"not a lock")
    (repository / LOCKS_FOLDER / "m.lock").symlink_to(target)
    change = RepositoryChange(ModelRepository(repository), "m")
    with pytest.raises(FailedPrecondition, match=r"m\.lock: expected a real lock"):
        change.write_config_json("{}")
    assert target.read_bytes() == b"not a lock"
    assert recover_interrupted(ModelRepository(repository)) == []
