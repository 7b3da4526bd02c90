"""SIGKILL during uploads and loads, then restart: the repository stays consistent.

Each run starts from the server the previous run restarted, begins one write of a new version
of model `m` and kills the server with SIGKILL at a point drawn from a seeded RNG, counted in
protocol steps, not time:

- an UploadModel stream (header, then 8 KiB chunks) killed after k messages were taken by the
  client's gRPC, or once the stream closed, or once the upload was acknowledged;
- a RepositoryModelLoad with a `file:` override, killed at once, after j ServerLive round
  trips, or once acknowledged.

After each restart: no temporary file is left, every version folder holds exactly a complete
`model.onnx` whose sha256 is one we sent for that version, every acknowledged version is there,
the model serves its newest complete version (never older than the one served before the
kill), and the answer proves which file it runs (version v computes X + v).

TRTSERVE_CRASH_RUNS (default 50) and TRTSERVE_CRASH_SEED choose the runs; a failure names the
run, its kill point and the seed that reproduces it.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from server_process import ServerProcess, start_server
from tiny_models import add_config, add_constant_model, add_request, output_of, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc

RUNS = int(os.environ.get("TRTSERVE_CRASH_RUNS", "50"))
SEED = int(os.environ.get("TRTSERVE_CRASH_SEED", "5"))
MODEL = "m"
CHUNK = 8 * 1024
PAD = 96 * 1024  # about 12 chunks a file
TIMEOUT_S = 30.0
CONFIG = add_config(MODEL)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Harness:
    """The repository, the live server and what the test sent and saw acknowledged."""

    repository: Path
    process: ServerProcess
    sent: dict[int, str] = field(default_factory=dict)
    acked: dict[int, str] = field(default_factory=dict)
    served: int = 1
    next_version: int = 2

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.process.address)

    def restart(self) -> None:
        self.process.kill()  # SIGKILL, then wait for the exit
        self.process = start_server(["--repository", str(self.repository)])


@dataclass(frozen=True)
class KillPoint:
    kind: str  # "upload" or "load"
    step: int  # where the kill came, in protocol steps (see crash_upload and crash_load)
    steps: int  # the last step of this kind: the kill came after the acknowledgement

    def __str__(self) -> str:
        return f"{self.kind} killed at step {self.step} of {self.steps} ({self.phase})"

    @property
    def phase(self) -> str:
        if self.step == 0:
            return "at once"
        if self.step == self.steps:
            return "after the acknowledgement"
        if self.kind == "upload":
            return "stream closed" if self.step == self.steps - 1 else "stream open"
        return "after round trips"


def upload_messages(version: int, data: bytes) -> list[tpb.UploadRequest]:
    header = tpb.UploadHeader(
        model_name=MODEL,
        version=version,
        filename="model.onnx",
        total_bytes=len(data),
        sha256=sha256(data),
    )
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    return [tpb.UploadRequest(header=header), *(tpb.UploadRequest(data=c) for c in chunks)]


def crash_upload(h: Harness, version: int, data: bytes, rng: random.Random) -> KillPoint:
    messages = upload_messages(version, data)
    # 0: at once; 1..n: n messages taken, stream open; n+1: stream closed; n+2: acknowledged.
    point = KillPoint("upload", rng.randrange(len(messages) + 3), len(messages) + 2)
    reached = threading.Event()
    release = threading.Event()

    def stream() -> Iterator[tpb.UploadRequest]:
        for index, message in enumerate(messages):
            yield message
            # Runs when gRPC asks for the next message: this one has been taken.
            if index + 1 == point.step:
                reached.set()
                release.wait(TIMEOUT_S)
        if point.step == len(messages) + 1:  # every message taken, the stream closing
            reached.set()

    with h.channel() as channel:
        stub = tpb_grpc.ModelUploadStub(channel)  # type: ignore[no-untyped-call]
        future = stub.UploadModel.future(stream(), timeout=TIMEOUT_S)
        if point.step == point.steps:
            future.result()
        elif point.step > 0:
            assert reached.wait(TIMEOUT_S), f"{point}: the client never reached it"
        h.process.kill()
        release.set()
        record_ack(h, version, data, future)
    return point


def crash_load(h: Harness, version: int, data: bytes, rng: random.Random) -> KillPoint:
    # 0: at once; 1..3: after that many ServerLive round trips; 4: acknowledged.
    point = KillPoint("load", rng.randrange(5), 4)
    request = pb.RepositoryModelLoadRequest(model_name=MODEL)
    request.parameters["config"].string_param = CONFIG
    request.parameters[f"file:{version}/model.onnx"].bytes_param = data
    with h.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        future = stub.RepositoryModelLoad.future(request, timeout=TIMEOUT_S)
        if point.step == point.steps:
            future.result()
        for _ in range(point.step if point.step < point.steps else 0):
            stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S)
        h.process.kill()
        record_ack(h, version, data, future)
    return point


def record_ack(h: Harness, version: int, data: bytes, future: Future[Any]) -> None:
    try:
        future.result(timeout=TIMEOUT_S)
    except grpc.RpcError:
        return  # the server died first: not acknowledged, may or may not be stored
    h.acked[version] = sha256(data)


def check_repository(h: Harness, where: str) -> list[int]:
    """The complete versions on disk, after checking that nothing else is there."""
    leftovers = [str(p) for p in h.repository.rglob(".tmp-*")]
    assert not leftovers, f"{where}: temporary files after the restart: {leftovers}"
    folder = h.repository / MODEL
    assert (folder / "config.json").read_text() == CONFIG, f"{where}: config.json changed"
    versions = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "config.json":
            continue
        assert entry.is_dir() and entry.name.isdigit(), f"{where}: unexpected {entry}"
        version = int(entry.name)
        files = sorted(p.name for p in entry.iterdir())
        assert files == ["model.onnx"], f"{where}: version {version} holds {files}"
        digest = sha256((entry / "model.onnx").read_bytes())
        assert digest == h.sent[version], f"{where}: version {version} is not a file we sent"
        versions.append(version)
    for version in h.acked:
        assert version in versions, f"{where}: acknowledged version {version} was lost"
    return versions


def check_serving(h: Harness, versions: list[int], where: str) -> None:
    with h.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S)
        (entry,) = [m for m in index.models if m.name == MODEL]
        assert entry.state == "READY", f"{where}: {MODEL} is {entry.state}: {entry.reason}"
        served = int(entry.version)
        assert served == max(versions), f"{where}: serves {served}, newest complete {versions}"
        assert served >= h.served, f"{where}: serves {served}, served {h.served} before"
        request, x = add_request(MODEL, rows=2)
        y = output_of(stub.ModelInfer(request, timeout=TIMEOUT_S))
        np.testing.assert_array_equal(y, x + served, err_msg=f"{where}: wrong file serves")
    h.served = served


def test_sigkill_during_uploads_and_loads(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    first = add_constant_model(1.0, pad_bytes=PAD)
    write_model(repository, MODEL, 1, first)
    h = Harness(repository, start_server(["--repository", str(repository)]))
    h.sent[1] = h.acked[1] = sha256(first)
    rng = random.Random(SEED)
    crash: dict[str, Callable[[Harness, int, bytes, random.Random], KillPoint]] = {
        "upload": crash_upload,
        "load": crash_load,
    }
    outcomes: dict[str, int] = {"stored": 0, "not stored": 0}
    points: Counter[str] = Counter()
    try:
        for run in range(RUNS):
            version, h.next_version = h.next_version, h.next_version + 1
            data = add_constant_model(float(version), pad_bytes=PAD + rng.randrange(CHUNK))
            h.sent[version] = sha256(data)
            point = crash[rng.choice(("upload", "upload", "load"))](h, version, data, rng)
            where = f"run {run} (seed {SEED}), version {version}, {point}"
            h.restart()
            try:
                versions = check_repository(h, where)
                check_serving(h, versions, where)
            except AssertionError as error:
                log = "".join(h.process.output[-15:])
                raise AssertionError(f"{error}\nrestarted server's log:\n{log}") from None
            outcomes["stored" if version in versions else "not stored"] += 1
            points[f"{point.kind}: {point.phase}"] += 1
    finally:
        h.process.kill()
    # Shown with -s: what the runs covered (docs/reliability.md records a long run).
    print(f"\n{RUNS} runs, seed {SEED}: {outcomes}; kill points {dict(sorted(points.items()))}")
    # Both outcomes must occur, or the kill points did not cover the write.
    assert all(outcomes.values()), outcomes
