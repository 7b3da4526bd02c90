"""Version churn: load a new version of one model again and again; watch /metrics and RSS.

Against one server started here (--insecure-local-admin, metrics on a free port), `--versions`
times: a RepositoryModelLoad with a `file:` override of the next version (a tiny add-constant
ONNX model) and one inference on it. Every `--sample-every` versions it prints the /metrics
size, the number of series labelled with the model, ModelStatistics entries and the server's
RSS. Stops after `--versions` or `--max-s` seconds, whichever comes first.

    python benchmarks/version_churn.py --versions 600

Run it with another checkout's interpreter (its venv) to measure that checkout's server.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, start

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

MODEL = "churn"
WIDTH = 4
TIMEOUT_S = 30.0
CONFIG = json.dumps(
    {
        "name": MODEL,
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
)


def add_model(constant: float) -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", WIDTH])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", WIDTH])
    c = numpy_helper.from_array(np.full((WIDTH,), constant, dtype=np.float32), name="C")
    graph = helper.make_graph([helper.make_node("Add", ["X", "C"], ["Y"])], "add", [x], [y], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="X", datatype="FP32", shape=[1, WIDTH])
    request.raw_input_contents.append(np.ones((1, WIDTH), np.float32).tobytes())
    return request


def sample(server: ServerUnderTest, stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
        text = reply.read().decode()
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=TIMEOUT_S)
    return {
        "metrics_kib": len(text.encode()) / 1024,
        "series": sum(1 for line in text.splitlines() if f'model="{MODEL}"' in line),
        "statistics": len(stats.model_stats),
        "rss_mib": server.rss_mib(),
    }


def write_repository(folder: Path) -> Path:
    """A repository in `folder` holding version 1 of the add-constant model."""
    repository = folder / "repository"
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "config.json").write_text(CONFIG)
    (repository / MODEL / "1" / "model.onnx").write_bytes(add_model(1.0))
    return repository


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=600)
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--max-s", type=float, default=300.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        repository = write_repository(Path(folder))
        server = start(repository, metrics=True)
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.ModelInfer(infer_request(), timeout=TIMEOUT_S)
            print("versions metrics_kib series statistics rss_mib", flush=True)
            first = sample(server, stub)
            print(1, *(f"{v:.1f}" for v in first.values()), flush=True)
            deadline = time.monotonic() + args.max_s
            version = 1
            while version < args.versions and time.monotonic() < deadline:
                version += 1
                load = pb.RepositoryModelLoadRequest(model_name=MODEL)
                load.parameters[f"file:{version}/model.onnx"].bytes_param = add_model(version)
                load.parameters["config"].string_param = CONFIG
                stub.RepositoryModelLoad(load, timeout=TIMEOUT_S)
                stub.ModelInfer(infer_request(), timeout=TIMEOUT_S)
                if version % args.sample_every == 0:
                    now = sample(server, stub)
                    print(version, *(f"{v:.1f}" for v in now.values()), flush=True)
            last = sample(server, stub)
            per_version = (last["metrics_kib"] - first["metrics_kib"]) / max(1, version - 1)
            print(
                f"after {version} versions: /metrics {first['metrics_kib']:.1f} -> "
                f"{last['metrics_kib']:.1f} KiB ({per_version:.2f} KiB a version), RSS "
                f"{first['rss_mib']:.1f} -> {last['rss_mib']:.1f} MiB, ModelStatistics "
                f"entries {first['statistics']:.0f} -> {last['statistics']:.0f}"
            )
        finally:
            channel.close()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
