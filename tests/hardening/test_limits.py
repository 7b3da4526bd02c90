"""Each limit over real gRPC: the right status, a message naming the limit, no memory growth.

Server: --max-message-mb 2, --max-upload-mb 1, --max-tensor-elements 4096 and
--max-concurrent-uploads 2; model `add` (FP32 [batch, 4]), model `dense` (FP32 [batch, 2048],
8 layers, one instance, queue of 2 requests: a few ms a request, so a burst overflows it).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from served import Served, status_of, wait_for
from server_process import start_server
from tiny_models import add_config, add_constant_model, add_request, tree, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb

TIMEOUT_S = 30.0
MIB = 1024 * 1024
MAX_ELEMENTS = 4096
DENSE_WIDTH = 2048
DENSE_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x", data_type: TYPE_FP32, dims: [ 2048 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2048 ] } ]
dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: 2 } }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class Limited(Served):
    def rss_kib(self) -> int:
        """The server's resident set size (VmRSS), in KiB."""
        status = Path(f"/proc/{self.process.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, dense_model_file: Path) -> Iterator[Limited]:
    repository = tmp_path_factory.mktemp("limits") / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    (repository / "dense" / "1").mkdir(parents=True)
    (repository / "dense" / "config.pbtxt").write_text(DENSE_CONFIG)
    (repository / "dense" / "1" / "model.onnx").symlink_to(dense_model_file)
    process = start_server(
        [
            "--repository",
            str(repository),
            "--max-message-mb",
            "2",
            "--max-upload-mb",
            "1",
            "--max-tensor-elements",
            str(MAX_ELEMENTS),
            "--max-concurrent-uploads",
            "2",
        ]
    )
    # The client's own limit is higher, so the server's is the one that answers.
    channel = grpc.insecure_channel(
        process.address,
        options=[
            ("grpc.max_send_message_length", 64 * MIB),
            ("grpc.max_receive_message_length", 64 * MIB),
        ],
    )
    try:
        yield Limited(process, repository, channel)
    finally:
        channel.close()
        assert process.terminate() == 0


def dense_request(rows: int, raw_bytes: int | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dense")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, DENSE_WIDTH])
    data = np.ones((rows, DENSE_WIDTH), np.float32).tobytes()
    request.raw_input_contents.append(data if raw_bytes is None else data[:raw_bytes])
    return request


def oversized_request() -> pb.ModelInferRequest:
    request, _ = add_request("add")
    request.raw_input_contents[0] = bytes(3 * MIB)
    return request


def upload_messages(
    name: str, data: bytes, declared: int | None = None, chunk: int = 64 * 1024
) -> Iterator[tpb.UploadRequest]:
    yield tpb.UploadRequest(
        header=tpb.UploadHeader(
            model_name=name,
            version=1,
            filename="model.onnx",
            total_bytes=len(data) if declared is None else declared,
            config_json=add_config(name),
        )
    )
    for start in range(0, len(data), chunk):
        yield tpb.UploadRequest(data=data[start : start + chunk])


def padded_model(size: int) -> bytes:
    return add_constant_model(2.0, pad_bytes=size)


# --- message size ---------------------------------------------------------------------------


def test_message_over_max_message_size(limited: Limited) -> None:
    code, message = status_of(
        lambda: limited.stub.ModelInfer(oversized_request(), timeout=TIMEOUT_S)
    )
    assert code == EXHAUSTED
    assert str(2 * MIB) in message  # gRPC names the limit: "larger than max (... vs. 2097152)"
    request, _ = add_request("add")
    limited.stub.ModelInfer(request, timeout=TIMEOUT_S)


# --- tensor elements ------------------------------------------------------------------------


def test_tensor_over_max_tensor_elements(limited: Limited) -> None:
    assert status_of(lambda: limited.stub.ModelInfer(dense_request(2), timeout=TIMEOUT_S))[0] == (
        grpc.StatusCode.OK
    )
    code, message = status_of(lambda: limited.stub.ModelInfer(dense_request(3), timeout=TIMEOUT_S))
    assert code == EXHAUSTED
    assert "input 'x' of model 'dense'" in message and "max_tensor_elements" in message
    assert f"at most {MAX_ELEMENTS} elements" in message and "6144 elements" in message


def test_tensor_elements_are_checked_before_decoding(limited: Limited) -> None:
    """A shape of too many elements with 4 bytes of data: the limit answers, not the decoder."""
    code, message = status_of(
        lambda: limited.stub.ModelInfer(dense_request(4, raw_bytes=4), timeout=TIMEOUT_S)
    )
    assert code == EXHAUSTED and "max_tensor_elements" in message


def test_streamed_requests_meet_the_same_element_limit(limited: Limited) -> None:
    replies = list(limited.stub.ModelStreamInfer(iter([dense_request(3)]), timeout=TIMEOUT_S))
    assert len(replies) == 1 and "max_tensor_elements" in replies[0].error_message


# --- uploads --------------------------------------------------------------------------------


def test_upload_over_max_upload_size_leaves_nothing(limited: Limited) -> None:
    before = tree(limited.repository)
    data = padded_model(MIB + MIB // 2)
    for declared in (0, len(data)):
        code, message = status_of(
            lambda declared=declared: limited.uploads.UploadModel(
                upload_messages("too_big", data, declared), timeout=TIMEOUT_S
            )
        )
        assert code == EXHAUSTED, (code, message)
        assert f"at most {MIB} bytes" in message, message
    assert tree(limited.repository) == before


def test_load_file_override_over_max_upload_size(limited: Limited) -> None:
    before = tree(limited.repository)
    request = pb.RepositoryModelLoadRequest(model_name="too_big")
    request.parameters["config"].string_param = add_config("too_big")
    request.parameters["file:1/model.onnx"].bytes_param = padded_model(MIB + MIB // 2)
    code, message = status_of(lambda: limited.stub.RepositoryModelLoad(request, timeout=TIMEOUT_S))
    assert code == EXHAUSTED and "max_upload_mb" in message and "too_big" in message
    assert tree(limited.repository) == before


def test_uploads_over_max_concurrent_uploads(limited: Limited) -> None:
    data = padded_model(256 * 1024)
    release = threading.Event()

    def held(name: str) -> Iterator[tpb.UploadRequest]:
        messages = upload_messages(name, data)
        yield next(messages)
        yield next(messages)
        release.wait(TIMEOUT_S)  # the stream stays open, holding its upload slot
        yield from messages

    futures = [
        limited.uploads.UploadModel.future(held(f"held{i}"), timeout=TIMEOUT_S) for i in (1, 2)
    ]

    def writing(name: str) -> bool:
        folder = limited.repository / name
        return folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.rglob("*"))

    wait_for(lambda: writing("held1") and writing("held2"), "both held uploads to start writing")
    code, message = status_of(
        lambda: limited.uploads.UploadModel(upload_messages("third", data), timeout=TIMEOUT_S)
    )
    assert code == EXHAUSTED
    assert "max_concurrent_uploads" in message and "at most 2 at once" in message
    release.set()
    for future in futures:
        assert future.result().stored_bytes == len(data)
    reply = limited.uploads.UploadModel(upload_messages("third", data), timeout=TIMEOUT_S)
    assert reply.sha256 == hashlib.sha256(data).hexdigest()


# --- queue ----------------------------------------------------------------------------------


def test_requests_over_max_queue_size(limited: Limited) -> None:
    request = dense_request(1)
    with ThreadPoolExecutor(32) as pool:
        futures = [
            pool.submit(status_of, lambda: limited.stub.ModelInfer(request, timeout=TIMEOUT_S))
            for _ in range(64)
        ]
        results = [f.result() for f in futures]
    codes = [code for code, _ in results]
    assert set(codes) <= {grpc.StatusCode.OK, EXHAUSTED}, set(codes)
    assert codes.count(grpc.StatusCode.OK) >= 3  # one executing, two queued
    shed = [message for code, message in results if code == EXHAUSTED]
    assert shed, "64 requests at once never overflowed a queue of 2"
    assert all("queue is full (max_queue_size 2)" in m for m in shed), shed[0]


# --- memory ---------------------------------------------------------------------------------


def refuse_burst(limited: Limited, rounds: int) -> None:
    oversized = oversized_request()
    too_many = dense_request(4, raw_bytes=4)
    big_upload = padded_model(MIB + MIB // 2)
    with ThreadPoolExecutor(8) as pool:
        calls = []
        for i in range(rounds):
            calls.append(lambda: limited.stub.ModelInfer(oversized, timeout=TIMEOUT_S))
            calls.append(lambda: limited.stub.ModelInfer(too_many, timeout=TIMEOUT_S))
            if i % 5 == 0:
                calls.append(
                    lambda: limited.uploads.UploadModel(
                        upload_messages("rss", big_upload), timeout=TIMEOUT_S
                    )
                )
        for code, _ in pool.map(status_of, calls):
            assert code == EXHAUSTED


def test_refused_requests_do_not_grow_memory(limited: Limited) -> None:
    # Warm-up at the same concurrency: gRPC's buffers and the allocator's arenas reach their
    # working size in the first bursts and stay there (measured: +10 MiB once, then flat;
    # single samples after that still vary by up to 16 MiB).
    refuse_burst(limited, 50)
    refuse_burst(limited, 50)
    before = limited.rss_kib()
    refuse_burst(limited, 100)  # 300 MiB of oversized messages, 20 oversized uploads
    growth_mib = (limited.rss_kib() - before) / 1024
    # Keeping even a tenth of what was refused would be 30 MiB.
    assert growth_mib < 24, f"server RSS grew {growth_mib:.1f} MiB over a burst of refusals"
    assert not (limited.repository / "rss").exists()
