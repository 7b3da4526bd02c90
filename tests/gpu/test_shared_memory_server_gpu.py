"""Tensors by reference on a GPU: the real plan served through system and CUDA shared memory.

Stock tritonclient (its shared-memory utilities, run in a spawned interpreter) puts the input in
a region and names a region for the output; what it reads back must equal, bit for bit, a direct
TensorRT run. CUDA regions at offset 0 are bound to the engine directly; at an offset that breaks
the 256-byte alignment the server copies device to device; both must give the same bytes.
Skipped without a GPU, the plans or lean runtime 11.0.0.114 (see test_server_gpu.py).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

# Skips this module too where the GPU requirements are missing (a module-level skip).
import test_server_gpu as base
from plan_fixtures import OUTPUT_SHAPE, PLAN_NAME, direct_run, plans_dir, seeded_input
from rest_calls import call
from server_process import ServerProcess

from trtserve.server.runtime.lean_store import ENV_RUNTIMES_DIR

pytestmark = pytest.mark.gpu

MODEL = "conv_shm"


@pytest.fixture(scope="module")
def triton() -> Iterator[base.Triton]:
    if str(base.GPU_TESTS) not in sys.path:
        sys.path.insert(0, str(base.GPU_TESTS))
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    yield base.Triton(pool)
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    runtimes = Path(os.environ[ENV_RUNTIMES_DIR]).resolve()
    proc = base.launch(tmp_path_factory.mktemp("shm-repository"), runtimes, [])
    yield proc
    base.stop(proc, "shared memory")


@pytest.fixture(scope="module")
def shm_model(triton: base.Triton, shm_server: ServerProcess) -> str:
    plan = (plans_dir() / PLAN_NAME).read_bytes()
    config = base.model_config(MODEL)
    triton("load_model", shm_server.address, MODEL, config, {"file:1/model.plan": plan})
    return MODEL


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return seeded_input()


@pytest.fixture(scope="module")
def expected(x: np.ndarray) -> np.ndarray:
    return direct_run(x)


def test_cuda_shared_memory_is_listed_with_a_gpu(
    triton: base.Triton, shm_server: ServerProcess
) -> None:
    extensions = triton("server_extensions", shm_server.address)
    assert "system_shared_memory" in extensions and "cuda_shared_memory" in extensions


@pytest.mark.parametrize(
    ("kind", "offset"),
    [("system", 0), ("system", 4), ("cuda", 0), ("cuda", 256), ("cuda", 4)],
)
def test_outputs_by_reference_equal_the_direct_run_bit_for_bit(
    triton: base.Triton,
    shm_server: ServerProcess,
    shm_model: str,
    x: np.ndarray,
    expected: np.ndarray,
    kind: str,
    offset: int,
) -> None:
    outputs = triton(
        "infer_by_reference",
        shm_server.address,
        shm_model,
        kind,
        x,
        OUTPUT_SHAPE,
        offset,
        1,
        f"{kind}-{offset}",
    )
    assert outputs[0].tobytes() == expected.tobytes()


def test_requests_in_a_row_through_cuda_memory_each_see_their_own_input(
    triton: base.Triton, shm_server: ServerProcess, shm_model: str, x: np.ndarray
) -> None:
    outputs = triton(
        "infer_by_reference", shm_server.address, shm_model, "cuda", x, OUTPUT_SHAPE, 0, 3, "row"
    )
    for i, out in enumerate(outputs):
        assert out.tobytes() == direct_run(x + np.float32(i)).tobytes(), f"request {i}"


def test_bad_cuda_registrations_name_what_is_wrong(
    triton: base.Triton, shm_server: ServerProcess
) -> None:
    found = triton("cuda_registration_errors", shm_server.address)
    status, message = found["device"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "99" in message, found
    status, message = found["larger"]
    assert status == "StatusCode.INVALID_ARGUMENT" and str(1 << 30) in message, found
    status, message = found["garbage"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "bad-handle" in message, found
    assert "bad-" not in found["left registered"][1], found


def test_bytes_moved_by_reference_are_counted(
    triton: base.Triton, shm_server: ServerProcess, shm_model: str, x: np.ndarray
) -> None:
    def cuda_bytes(direction: str) -> float:
        pattern = (
            rf'^trtserve_tensor_bytes_total\{{direction="{direction}",'
            rf'path="cuda_shared_memory"\}} (\S+)$'
        )
        found = re.search(pattern, base.scrape(shm_server), re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = (cuda_bytes("input"), cuda_bytes("output"))
    triton(
        "infer_by_reference", shm_server.address, shm_model, "cuda", x, OUTPUT_SHAPE, 0, 2, "count"
    )
    after = (cuda_bytes("input"), cuda_bytes("output"))
    assert after[0] - before[0] == 2 * x.nbytes
    assert after[1] - before[1] == 2 * int(np.prod(OUTPUT_SHAPE)) * 4


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("kind", ["system", "cuda"])
def test_perf_analyzer_runs_unchanged_with_shared_memory(
    shm_server: ServerProcess, shm_model: str, kind: str, tmp_path: Path, protocol: str
) -> None:
    binary = os.environ.get("TRTSERVE_PERF_ANALYZER")
    if not binary:
        pytest.skip("TRTSERVE_PERF_ANALYZER is not set (scripts/gpu_run.sh sets it)")
    report = tmp_path / "report.csv"
    done = subprocess.run(
        [
            binary,
            *("-m", shm_model, "-i", protocol),
            *("-u", shm_server.address if protocol == "grpc" else shm_server.http_address),
            *("--shared-memory", kind),
            # Room for the 3.2 MB output (perf_analyzer's default is 100 KB per output).
            *("--output-shared-memory-size", str(int(np.prod(OUTPUT_SHAPE)) * 4)),
            *("--concurrency-range", "1:8:7", "-p", "1000", "-s", "100", "-r", "3"),
            *("-f", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(report.open()))
    assert sorted(row["Concurrency"] for row in rows) == ["1", "8"], rows
    for row in rows:
        print(
            f"perf_analyzer -i {protocol} --shared-memory {kind} c={row['Concurrency']}: "
            f"{float(row['Inferences/Second']):.0f} infer/s, p99 {row['p99 latency']} us"
        )
        assert float(row["Inferences/Second"]) > 0


def test_rest_binary_tensors_equal_the_direct_run_bit_for_bit(
    shm_server: ServerProcess, shm_model: str, x: np.ndarray, expected: np.ndarray
) -> None:
    """The plan over REST, input and output as binary tensor data (tritonclient.http's way)."""
    document = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
    }
    text = json.dumps(document).encode()
    answer = call(
        shm_server.http_address,
        "POST",
        f"/v2/models/{shm_model}/infer",
        text + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(text))},
    )
    assert answer.status == 200, answer.body[:500]
    length = int(answer.headers["inference-header-content-length"])
    [output] = json.loads(answer.body[:length])["outputs"]
    assert output["shape"] == list(expected.shape)
    y = np.frombuffer(answer.body[length:], np.float32).reshape(expected.shape)
    np.testing.assert_array_equal(y, expected)
