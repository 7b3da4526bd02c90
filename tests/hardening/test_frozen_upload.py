"""A frozen upload client: the model stays under control, and the idle timeout frees the slot.

The client sends a header and one chunk, then waits on an event no one sets (a SIGSTOPped
process looks the same to the server). Bounds on how long calls take are hang detectors, not
measurements: each call finishes in milliseconds when nothing blocks it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from served import Served, serving, status_of, wait_for
from server_process import start_server
from tiny_models import add_config, add_constant_model, add_request, output_of, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb

TIMEOUT_S = 30.0
# Unload and reload of a tiny model take milliseconds; a held lock makes them wait forever.
HANG_S = 15.0
MODEL = "add"


def frozen_upload(version: int, release: threading.Event) -> Iterator[tpb.UploadRequest]:
    data = add_constant_model(float(version), pad_bytes=64 * 1024)
    yield tpb.UploadRequest(
        header=tpb.UploadHeader(
            model_name=MODEL,
            version=version,
            filename="model.onnx",
            total_bytes=len(data),
            config_json=add_config(MODEL),
        )
    )
    yield tpb.UploadRequest(data=data[:4096])
    release.wait(TIMEOUT_S)  # never set while the test looks: the client is frozen


def staged_files(repository: Path) -> list[Path]:
    return [p for p in (repository / MODEL).rglob(".tmp-*")]


def serve(tmp_path: Path, *args: str) -> contextlib.AbstractContextManager[Served]:
    repository = tmp_path / "repository"
    write_model(repository, MODEL, 1, add_constant_model(1.0))
    process = start_server(
        ["--repository", str(repository), "--max-concurrent-uploads", "1", *args]
    )
    return serving(process, repository)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as served:
        yield served


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path, "--upload-idle-timeout-s", "1") as served:
        yield served


def test_frozen_upload_does_not_block_unload_and_reload(served: Served) -> None:
    release = threading.Event()
    upload = served.uploads.UploadModel.future(frozen_upload(2, release), timeout=TIMEOUT_S)
    try:
        wait_for(lambda: staged_files(served.repository), "the upload to start writing")
        unload = pb.RepositoryModelUnloadRequest(model_name=MODEL)
        served.stub.RepositoryModelUnload(unload, timeout=HANG_S)
        served.stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=HANG_S
        )
        # Still version 1: the unfinished upload is invisible to the reload.
        request, x = add_request(MODEL)
        assert (output_of(served.stub.ModelInfer(request, timeout=HANG_S)) == x + 1.0).all()
        assert not upload.done() and staged_files(served.repository)
    finally:
        upload.cancel()
        release.set()
    wait_for(lambda: not staged_files(served.repository), "the cancelled upload's file to go")


def test_idle_upload_is_dropped_and_its_slot_released(impatient: Served) -> None:
    release = threading.Event()
    upload = impatient.uploads.UploadModel.future(frozen_upload(2, release), timeout=TIMEOUT_S)
    try:
        code, message = status_of(upload.result)
    finally:
        release.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, message
    assert "upload_idle_timeout_s" in message and "within 1 s" in message
    wait_for(lambda: not staged_files(impatient.repository), "the staged file to be removed")
    assert sorted(p.name for p in (impatient.repository / MODEL).iterdir()) == ["1", "config.json"]
    # The one slot (--max-concurrent-uploads 1) is free again: a complete upload goes through.
    data = add_constant_model(3.0)

    def complete() -> Iterator[tpb.UploadRequest]:
        header = tpb.UploadHeader(model_name=MODEL, version=3, filename="model.onnx")
        yield tpb.UploadRequest(header=header)
        yield tpb.UploadRequest(data=data)

    assert impatient.uploads.UploadModel(complete(), timeout=TIMEOUT_S).version == 3
    request, x = add_request(MODEL)
    assert (output_of(impatient.stub.ModelInfer(request, timeout=TIMEOUT_S)) == x + 3.0).all()
