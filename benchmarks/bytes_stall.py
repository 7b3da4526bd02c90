"""Large BYTES and typed-contents requests: server memory, and how long other clients wait.

Starts `trtserve serve` on loopback with two identity models (`bytes_id`: BYTES [-1],
`fp32_id`: FP32 [-1]), then runs each scenario while a prober thread calls ServerLive
back to back (each with a 30 s deadline: one unanswered counts as a 30 s stall) and a
sampler reads the server's RSS every 10 ms:

- `bytes`: one request of `--elements` one-byte BYTES elements, raw (about 57 MiB at 12 M);
- `bytes x3`: three of them at once;
- `fp32 contents`: `--elements` FP32 values as typed `fp32_contents`;
- `fp32 raw`: the same values as raw bytes;
- `bytes at default limit`: the BYTES request against a server with the default limits
  (the first server raises max_bytes_elements through TRTSERVE_MAX_BYTES_ELEMENTS, which a
  server without that setting ignores).

For each: the answer's status, its time, RSS before / peak / one second after, and the worst
ServerLive latency while it ran. Bounded: every call has a deadline, the tool stops by itself.

    python benchmarks/bytes_stall.py                # about a minute on 2 cores
    python benchmarks/bytes_stall.py --elements 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, start

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 120.0
LIVE_TIMEOUT_S = 30.0
MIB = 1 << 20
CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ {{ name: "X", data_type: {kind}, dims: [ -1 ] }} ]
output [ {{ name: "Y", data_type: {kind}, dims: [ -1 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""


def identity_model(element_type: int) -> bytes:
    x = helper.make_tensor_value_info("X", element_type, ["N"])
    y = helper.make_tensor_value_info("Y", element_type, ["N"])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def write_repository(root: Path) -> None:
    for name, element_type, kind in (
        ("bytes_id", TensorProto.STRING, "TYPE_STRING"),
        ("fp32_id", TensorProto.FLOAT, "TYPE_FP32"),
    ):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(kind=kind))
        (root / name / "1" / "model.onnx").write_bytes(identity_model(element_type))


def bytes_request(elements: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="bytes_id")
    request.inputs.add(name="X", datatype="BYTES", shape=[elements])
    # Each element: length 1 (4 bytes little-endian) and the byte "a".
    request.raw_input_contents.append(b"\x01\x00\x00\x00a" * elements)
    return request


def fp32_request(elements: int, typed: bool) -> pb.ModelInferRequest:
    values = np.arange(elements, dtype=np.float32)
    request = pb.ModelInferRequest(model_name="fp32_id")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[elements])
    if typed:
        tensor.contents.fp32_contents.extend(values.tolist())
    else:
        request.raw_input_contents.append(values.tobytes())
    return request


@dataclass
class Outcome:
    name: str
    statuses: list[str]
    seconds: float
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    worst_live_ms: float
    live_calls: int
    live_failed: int


class Watch:
    """ServerLive latencies and server RSS, sampled until stopped."""

    def __init__(self, server: ServerUnderTest, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        self.server = server
        self.stub = stub
        self.stop = threading.Event()
        self.worst_s = 0.0
        self.calls = 0
        self.failed = 0
        self.peak_mib = server.rss_mib()
        self.threads = [
            threading.Thread(target=self._probe, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT_S)

    def _probe(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                self.stub.ServerLive(pb.ServerLiveRequest(), timeout=LIVE_TIMEOUT_S)
            except grpc.RpcError:
                # Unanswered within the deadline: counted, and its wait is the stall.
                self.failed += 1
            self.worst_s = max(self.worst_s, time.perf_counter() - started)
            self.calls += 1

    def _sample(self) -> None:
        while not self.stop.wait(0.01):
            self.peak_mib = max(self.peak_mib, self.server.rss_mib())


def status(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return f"{error.code().name}: {(error.details() or '')[:160]}"
    return "OK"


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> Callable[[], object]:
    return lambda: stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)


def scenario(
    name: str,
    server: ServerUnderTest,
    channel: grpc.Channel,
    requests: list[pb.ModelInferRequest],
) -> Outcome:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    # The prober has its own connection, as another client would.
    with grpc.insecure_channel(server.address) as live_channel:
        live_stub = pb_grpc.GRPCInferenceServiceStub(live_channel)  # type: ignore[no-untyped-call]
        live_stub.ServerLive(pb.ServerLiveRequest(), timeout=30.0)
        before = server.rss_mib()
        started = time.perf_counter()
        with Watch(server, live_stub) as watch, ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(status, infer(stub, request)) for request in requests]
            statuses = [f.result() for f in futures]
            seconds = time.perf_counter() - started
        # What the server still holds a second after its answers.
        time.sleep(1.0)
        after = server.rss_mib()
    return Outcome(
        name,
        statuses,
        seconds,
        before,
        watch.peak_mib,
        after,
        watch.worst_s * 1e3,
        watch.calls,
        watch.failed,
    )


def report(outcome: Outcome) -> None:
    print(
        f"{outcome.name:24} {outcome.seconds:6.2f} s  rss before {outcome.rss_before_mib:7.0f} "
        f"peak {outcome.rss_peak_mib:7.0f} after {outcome.rss_after_mib:7.0f} MiB  "
        f"worst ServerLive {outcome.worst_live_ms:7.1f} ms ({outcome.live_calls} calls, "
        f"{outcome.live_failed} unanswered in {LIVE_TIMEOUT_S:g} s)"
    )
    for text in sorted(set(outcome.statuses)):
        print(f"{'':26}{outcome.statuses.count(text)} x {text}")


def channel_to(server: ServerUnderTest) -> grpc.Channel:
    limit = 256 * MIB
    return grpc.insecure_channel(
        server.address,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=12_000_000, help="elements per request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "repository"
        write_repository(repository)
        os.environ["TRTSERVE_MAX_BYTES_ELEMENTS"] = str(args.elements)
        server = start(repository)
        try:
            print(f"server {server.address}, pid {server.pid}, {args.elements} elements")
            with channel_to(server) as channel:
                for name, requests in (
                    ("bytes", [bytes_request(args.elements)]),
                    ("bytes x3", [bytes_request(args.elements) for _ in range(3)]),
                    ("fp32 contents", [fp32_request(args.elements, typed=True)]),
                    ("fp32 raw", [fp32_request(args.elements, typed=False)]),
                ):
                    report(scenario(name, server, channel, requests))
        finally:
            server.stop()
        del os.environ["TRTSERVE_MAX_BYTES_ELEMENTS"]
        server = start(repository)
        try:
            with channel_to(server) as channel:
                report(
                    scenario(
                        "bytes at default limit", server, channel, [bytes_request(args.elements)]
                    )
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
