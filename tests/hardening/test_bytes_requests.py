"""Large BYTES and typed-contents requests: limits, results, and an event loop left free.

One server runs in this process (its event loop in a thread), so a test can put a seam in
the decoder and see which thread it runs on: while a seam holds a decode or an encode, a
ServerLive from another channel must still be answered.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from onnx import TensorProto
from prometheus_client import CollectorRegistry
from tiny_models import write_identity_model

from trtserve.protocol import allocator, tensors
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.app import RunningServer, start_server
from trtserve.server.dataplane.dataplane import OFF_LOOP_ELEMENTS
from trtserve.server.settings import ServerSettings

MAX_BYTES_ELEMENTS = 4 * OFF_LOOP_ELEMENTS
MAX_TENSOR_ELEMENTS = 1 << 20
LARGE = 2 * OFF_LOOP_ELEMENTS
TIMEOUT_S = 30.0
# Shorter than TIMEOUT_S: a loop held by a seam fails this call, never the seam's wait.
LIVE_TIMEOUT_S = 5.0


@dataclass
class InProcess:
    running: RunningServer
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    repository = tmp_path_factory.mktemp("bytes") / "repository"
    write_identity_model(repository, "text", TensorProto.STRING, 1)
    write_identity_model(repository, "cube", TensorProto.FLOAT, 3)
    settings = ServerSettings(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        repository=repository,
        max_tensor_elements=MAX_TENSOR_ELEMENTS,
        max_bytes_elements=MAX_BYTES_ELEMENTS,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    thread.start()
    started = asyncio.run_coroutine_threadsafe(start_server(settings, CollectorRegistry()), loop)
    running = started.result(TIMEOUT_S)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    try:
        yield InProcess(running, loop, channel)
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(running.drain_and_stop(), loop).result(TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)


def text_request(items: list[bytes], typed: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="text")
    tensor = request.inputs.add(name="X", datatype="BYTES", shape=[len(items)])
    if typed:
        tensor.contents.bytes_contents.extend(items)
    else:
        array = np.empty(len(items), dtype=np.object_)
        array[:] = items
        request.raw_input_contents.append(tensors.serialize_bytes(array))
    return request


def text_output(reply: pb.ModelInferResponse) -> list[bytes]:
    count = int(reply.outputs[0].shape[0])
    return list(tensors.deserialize_bytes("Y", reply.raw_output_contents[0], count))


def words(count: int) -> list[bytes]:
    return [f"w{i}-\u00e9".encode()[: 1 + i % 7] for i in range(count)]


@pytest.mark.parametrize("count", [3, LARGE])
@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_bytes_come_back_unchanged(served: InProcess, count: int, typed: bool) -> None:
    items = [item for item in words(count) if not item.endswith(b"\xc3")]
    reply = served.stub.ModelInfer(text_request(items, typed), timeout=TIMEOUT_S)
    assert text_output(reply) == items


@pytest.mark.parametrize("count", [6, LARGE])
def test_typed_fp32_contents_come_back_unchanged(served: InProcess, count: int) -> None:
    values = np.linspace(-3.0, 3.0, count, dtype=np.float32)
    request = pb.ModelInferRequest(model_name="cube")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 2, count // 2]).contents.fp32_contents[
        :
    ] = values.tolist()
    reply = served.stub.ModelInfer(request, timeout=TIMEOUT_S)
    out = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_bytes_over_max_bytes_elements_is_refused(served: InProcess, typed: bool) -> None:
    request = text_request([b"a"] * (MAX_BYTES_ELEMENTS + 1), typed)
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = caught.value.details() or ""
    assert "model 'text'" in message and "input 'X'" in message
    assert f"at most {MAX_BYTES_ELEMENTS}" in message and "max_bytes_elements" in message
    assert f"received {MAX_BYTES_ELEMENTS + 1}" in message
    # The server goes on answering.
    assert text_output(served.stub.ModelInfer(text_request([b"ok"]), timeout=TIMEOUT_S)) == [b"ok"]


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_empty_shape_with_a_huge_dimension_is_invalid_argument(
    served: InProcess, typed: bool
) -> None:
    request = pb.ModelInferRequest(model_name="cube")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 0, 2**62])
    if typed:
        tensor.contents.SetInParent()
    else:
        request.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = caught.value.details() or ""
    assert "input 'X' of model 'cube'" in message and "dimension 2" in message
    assert f"is {2**62}" in message and f"at most {MAX_TENSOR_ELEMENTS}" in message


def test_an_empty_shape_with_small_dimensions_is_served(served: InProcess) -> None:
    request = pb.ModelInferRequest(model_name="cube")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 0, MAX_TENSOR_ELEMENTS])
    request.raw_input_contents.append(b"")
    reply = served.stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert list(reply.outputs[0].shape) == [1, 0, MAX_TENSOR_ELEMENTS]


def gate(
    monkeypatch: pytest.MonkeyPatch, name: str, entered: threading.Event, release: threading.Event
) -> None:
    """Make tensors.`name` wait, once entered, until `release` (bounded) before it runs."""
    original: Callable[..., object] = getattr(tensors, name)

    def gated(*args: object) -> object:
        entered.set()
        release.wait(TIMEOUT_S)
        return original(*args)

    monkeypatch.setattr(tensors, name, gated)


def live_while_held(
    served: InProcess, request: pb.ModelInferRequest, seam: str, mp: pytest.MonkeyPatch
) -> pb.ModelInferResponse:
    entered, release = threading.Event(), threading.Event()
    gate(mp, seam, entered, release)
    # Another client, on its own connection.
    with grpc.insecure_channel(f"127.0.0.1:{served.running.grpc_port}") as other:
        live = pb_grpc.GRPCInferenceServiceStub(other)  # type: ignore[no-untyped-call]
        future = served.stub.ModelInfer.future(request, timeout=TIMEOUT_S)
        try:
            assert entered.wait(TIMEOUT_S), f"{seam} was never called"
            # Answered only if the seam holds a thread other than the event loop's.
            assert live.ServerLive(pb.ServerLiveRequest(), timeout=LIVE_TIMEOUT_S).live
        finally:
            release.set()
        return future.result()  # type: ignore[no-any-return]


def test_a_large_bytes_decode_leaves_the_event_loop_free(
    served: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [b"x"] * LARGE
    reply = live_while_held(served, text_request(items), "deserialize_bytes", monkeypatch)
    assert text_output(reply) == items


def test_a_large_bytes_encode_leaves_the_event_loop_free(
    served: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = words(LARGE)
    items = [item for item in items if not item.endswith(b"\xc3")]
    reply = live_while_held(served, text_request(items), "serialize_bytes", monkeypatch)
    assert text_output(reply) == items


def test_a_large_bytes_request_releases_its_freed_memory(
    served: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = threading.Event()
    seen_threads: list[str] = []

    def release() -> bool:
        seen_threads.append(threading.current_thread().name)
        released.set()
        return True

    monkeypatch.setattr(allocator, "release_freed_memory", release)
    served.stub.ModelInfer(text_request([b"y"] * LARGE), timeout=TIMEOUT_S)
    assert released.wait(TIMEOUT_S)
    assert "server-loop" not in seen_threads
