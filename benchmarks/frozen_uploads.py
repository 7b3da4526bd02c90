"""Frozen upload clients: does control of the model stay, and when are the slots freed?

Against one server started here (--insecure-local-admin, --max-concurrent-uploads N,
--upload-idle-timeout-s T), `--clients` N child processes each start an upload of model `m`
(header and one 4 KiB chunk) and are then stopped with SIGSTOP. Then, timed: unload of `m`,
its reload, a load with a `file:` override, and until `--max-s` has passed, one small upload
every half second until one is accepted (the slots are free). Prints each outcome and time,
and whether the frozen uploads' temporary files are gone. The children are killed at the end.

    python benchmarks/frozen_uploads.py --clients 4 --idle-s 30
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import start
from version_churn import CONFIG, MODEL, add_model, infer_request, write_repository

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc

CALL_S = 20.0
CHILD = """
import sys, threading
import grpc
from trtserve.protocol import trtserve_pb2 as tpb, trtserve_pb2_grpc as tpb_grpc
address, version = sys.argv[1], int(sys.argv[2])
def messages():
    header = tpb.UploadHeader(model_name="churn", version=version, filename="model.onnx",
                              total_bytes=1 << 20)
    yield tpb.UploadRequest(header=header)
    yield tpb.UploadRequest(data=bytes(4096))
    threading.Event().wait()
stub = tpb_grpc.ModelUploadStub(grpc.insecure_channel(address))
stub.UploadModel(messages())
"""


def timed(call: Callable[[], object]) -> str:
    started = time.monotonic()
    try:
        call()
        outcome = "OK"
    except grpc.RpcError as error:
        outcome = f"{error.code().name}: {(error.details() or '')[:90]}"
    return f"{time.monotonic() - started:6.2f} s  {outcome}"


def upload(version: int) -> Iterator[tpb.UploadRequest]:
    yield tpb.UploadRequest(
        header=tpb.UploadHeader(model_name=MODEL, version=version, filename="model.onnx")
    )
    yield tpb.UploadRequest(data=add_model(version))


def temporaries(repository: Path) -> list[Path]:
    return list((repository / MODEL).rglob(".tmp-*"))


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    event = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        event.wait(0.05)
    return condition()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--idle-s", type=float, default=None, help="upload_idle_timeout_s")
    parser.add_argument("--max-s", type=float, default=90.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        repository = write_repository(Path(folder))
        extra = ["--max-concurrent-uploads", str(args.clients)]
        if args.idle_s is not None:
            extra += ["--upload-idle-timeout-s", str(args.idle_s)]
        server = start(repository, extra)
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        uploads = tpb_grpc.ModelUploadStub(channel)  # type: ignore[no-untyped-call]
        children = [
            subprocess.Popen([sys.executable, "-c", CHILD, server.address, str(10 + i)])
            for i in range(args.clients)
        ]
        try:
            started = wait_until(lambda: len(temporaries(repository)) >= args.clients, 30)
            for child in children:
                os.kill(child.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            print(f"{args.clients} uploads frozen (all writing: {started})", flush=True)
            unload = pb.RepositoryModelUnloadRequest(model_name=MODEL)
            print(
                "unload          ",
                timed(lambda: stub.RepositoryModelUnload(unload, timeout=CALL_S)),
            )
            load = pb.RepositoryModelLoadRequest(model_name=MODEL)
            print("reload          ", timed(lambda: stub.RepositoryModelLoad(load, timeout=CALL_S)))
            print(
                "infer           ", timed(lambda: stub.ModelInfer(infer_request(), timeout=CALL_S))
            )
            with_file = pb.RepositoryModelLoadRequest(model_name=MODEL)
            with_file.parameters["file:2/model.onnx"].bytes_param = add_model(2.0)
            with_file.parameters["config"].string_param = CONFIG
            print(
                "load with file  ",
                timed(lambda: stub.RepositoryModelLoad(with_file, timeout=CALL_S)),
            )
            accepted = wait_until(
                lambda: timed(lambda: uploads.UploadModel(upload(3), timeout=CALL_S)).endswith(
                    "OK"
                ),
                max(0.0, args.max_s - (time.monotonic() - frozen_at)),
            )
            since = time.monotonic() - frozen_at
            print(f"an upload accepted: {accepted}, {since:.1f} s after the freeze", flush=True)
            gone = wait_until(lambda: not temporaries(repository), 10)
            since = time.monotonic() - frozen_at
            print(
                f"frozen uploads' temporary files gone: {gone}, {since:.1f} s after the freeze "
                f"({len(temporaries(repository))} left)",
                flush=True,
            )
        finally:
            for child in children:
                child.kill()
                child.wait(10)
            channel.close()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
