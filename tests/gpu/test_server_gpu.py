"""A real `trtserve serve` process serving the real 11.0.0.114 plan on a GPU, end to end.

The plan arrives by upload (tritonclient's load_model with files, and `trtserve upload`), is
served to tritonclient, and its outputs must equal, bit for bit, a direct in-process TensorRT
run of the same plan on the same input. Every lean runtime in $TRTSERVE_RUNTIMES_DIR is
preloaded into the one server process while the plan serves; plans whose exact version is not
installed, and corrupt uploads, get clear errors while the loaded version keeps serving.

Needs a CUDA device, tensorrt_dispatch, cuda-bindings, tritonclient, the plans (../shared/plans
or $TRTSERVE_TEST_PLANS) and lean runtime 11.0.0.114 in $TRTSERVE_RUNTIMES_DIR. Skipped
otherwise. tritonclient runs in a spawned interpreter (triton_gpu_driver.py): it cannot be
imported next to trtserve.protocol. With $TRTSERVE_SERVER_LOG set, every server's output is
appended to that file.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from plan_fixtures import (
    OLD_PLAN_NAME,
    OUTPUT_SHAPE,
    PLAN_NAME,
    ROOT,
    VERSION,
    direct_run,
    plans_dir,
    requirements_missing,
    seeded_input,
)

from trtserve.server.runtime.lean_store import ENV_RUNTIMES_DIR, LeanStore
from trtserve.server.runtime.plan_header import TrtVersion

pytestmark = pytest.mark.gpu

GPU_TESTS = Path(__file__).resolve().parent
DRIVER = "triton_gpu_driver"
CALL_TIMEOUT_S = 300.0
ENGINE_FAILURE = "Engine deserialization failed"

_missing = requirements_missing(
    modules=("tensorrt_dispatch", "tritonclient"), plans=(PLAN_NAME, OLD_PLAN_NAME)
)
if _missing:
    pytest.skip(_missing, allow_module_level=True)

# The session conftest puts tests/ on sys.path.
from server_process import ServerProcess, start_server  # noqa: E402

from trtserve.client import InferenceClient, InferenceServerError, InferInput  # noqa: E402


def model_config(name: str, instances: int = 2) -> str:
    """A tensorrt_plan config without tensors: the server derives them from the engine."""
    return json.dumps(
        {
            "name": name,
            "platform": "tensorrt_plan",
            "max_batch_size": 0,
            "instance_group": [{"count": instances, "kind": "KIND_GPU", "gpus": [0]}],
        }
    )


# --- tritonclient in a spawned interpreter ------------------------------------------------


class _ByName:
    """Pickles as `reduce`: the child rebuilds the object, this process never imports it."""

    def __init__(self, reduce: tuple[Any, ...]) -> None:
        self._reduce = reduce

    def __reduce__(self) -> tuple[Any, ...]:
        return self._reduce


def remote(name: str) -> Callable[..., Any]:
    """`triton_gpu_driver.<name>`, resolved in the child process."""
    module = _ByName((importlib.import_module, (DRIVER,)))
    return cast(Callable[..., Any], _ByName((getattr, (module, name))))


class Triton:
    """Runs triton_gpu_driver functions in one spawned interpreter."""

    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self._pool = pool

    def __call__(self, name: str, *args: object) -> Any:
        return self._pool.submit(remote(name), *args).result(timeout=CALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def triton() -> Iterator[Triton]:
    # The child inherits sys.path from this process, so it finds the driver as a top-level module.
    if str(GPU_TESTS) not in sys.path:
        sys.path.insert(0, str(GPU_TESTS))
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    yield Triton(pool)
    pool.shutdown(wait=True, cancel_futures=True)


# --- servers -------------------------------------------------------------------------------


def installed_versions(root: Path) -> list[str]:
    return [str(r.version) for r in LeanStore(root).list()]


def launch(repository: Path, runtimes: Path, preload: Sequence[str]) -> ServerProcess:
    # An empty repository to upload into: serve refuses a folder that does not exist.
    repository.mkdir(parents=True, exist_ok=True)
    args = ["--repository", str(repository), "--runtimes-dir", str(runtimes)]
    for version in preload:
        # One flag per version: the setting is a list flag (action="append").
        args += ["--preload-runtimes", version]
    return start_server(args, timeout=180.0)


def stop(proc: ServerProcess, label: str) -> None:
    try:
        proc.terminate(timeout=60.0)
    finally:
        proc.kill()
        log = os.environ.get("TRTSERVE_SERVER_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"===== server {label}: exit {proc.process.returncode} =====\n")
                f.write("".join(proc.output))


@pytest.fixture(scope="module")
def runtimes_dir() -> Path:
    return Path(os.environ[ENV_RUNTIMES_DIR]).resolve()


@pytest.fixture(scope="module")
def preloaded(runtimes_dir: Path) -> list[str]:
    """Every installed lean runtime version (the lead's run: 10.16.1.11, 11.0.0.114, 11.4.0.106)."""
    return installed_versions(runtimes_dir)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtimes_dir: Path, preloaded: list[str]
) -> Iterator[ServerProcess]:
    proc = launch(tmp_path_factory.mktemp("gpu-repository"), runtimes_dir, preloaded)
    yield proc
    stop(proc, "with every lean runtime")


@pytest.fixture(scope="module")
def plan() -> bytes:
    return (plans_dir() / PLAN_NAME).read_bytes()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return seeded_input()


@pytest.fixture(scope="module")
def expected(x: np.ndarray) -> np.ndarray:
    """The plan's output for `x` from TensorRT itself, in this process."""
    return direct_run(x)


@pytest.fixture(scope="module")
def triton_model(triton: Triton, server: ServerProcess, plan: bytes) -> str:
    """`conv`, uploaded with tritonclient's load_model(config, files)."""
    name = "conv"
    triton("load_model", server.address, name, model_config(name), {"file:1/model.plan": plan})
    return name


@pytest.fixture(scope="module")
def cli_model(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`conv_cli`, uploaded with `trtserve upload`."""
    name = "conv_cli"
    config = tmp_path_factory.mktemp("cli-config") / "config.json"
    config.write_text(model_config(name))
    done = upload_command(server.address, plans_dir() / PLAN_NAME, name, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stored {name} version 1" in done.stdout, done.stdout
    return name


def upload_command(
    address: str, plan: Path, name: str, config: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trtserve.cli.main",
            "upload",
            str(plan),
            "--name",
            name,
            "--config",
            str(config),
            "--address",
            address,
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT_S,
        cwd=ROOT,
    )


# --- TensorRT directly ---------------------------------------------------------------------


def test_direct_run_is_the_known_output(expected: np.ndarray) -> None:
    assert expected.shape == OUTPUT_SHAPE
    assert (expected >= 0).all()
    assert abs(float(expected.max()) - 0.891) < 0.001


# --- the server ----------------------------------------------------------------------------


def test_tritonclient_upload_serves_the_direct_run_bit_for_bit(
    triton: Triton, server: ServerProcess, triton_model: str, x: np.ndarray, expected: np.ndarray
) -> None:
    outputs = triton("infer", server.address, triton_model, {"x": x})
    assert list(outputs) == ["output0"]
    out = outputs["output0"]
    assert out.dtype == np.float32 and out.shape == OUTPUT_SHAPE
    assert out.tobytes() == expected.tobytes()
    # Both instances answer the same: several requests in a row.
    for _ in range(3):
        again = triton("infer", server.address, triton_model, {"x": x})["output0"]
        assert again.tobytes() == expected.tobytes()


def test_upload_command_serves_the_same_bytes(
    triton: Triton, server: ServerProcess, cli_model: str, x: np.ndarray, expected: np.ndarray
) -> None:
    out = triton("infer", server.address, cli_model, {"x": x})["output0"]
    assert out.tobytes() == expected.tobytes()
    with InferenceClient(server.address, timeout=CALL_TIMEOUT_S) as client:
        ours = client.infer(cli_model, [InferInput("x", x)]).as_numpy("output0")
    assert ours.tobytes() == expected.tobytes()


def tensors(
    listed: Sequence[dict[str, Any]], datatype: str, shape: str
) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of JSON tensors; protobuf's JSON writes int64 dims as strings."""
    return [(t["name"], t[datatype], [int(d) for d in t[shape]]) for t in listed]


def test_metadata_and_config_are_derived_from_the_engine(
    triton: Triton, server: ServerProcess, triton_model: str
) -> None:
    metadata, config = triton("metadata_and_config", server.address, triton_model)
    assert metadata["platform"] == "tensorrt_plan", metadata
    assert tensors(metadata["inputs"], "datatype", "shape") == [("x", "FP32", [1, 3, 224, 224])]
    assert tensors(metadata["outputs"], "datatype", "shape") == [
        ("output0", "FP32", [1, 16, 222, 222])
    ]
    assert config["platform"] == "tensorrt_plan", config
    assert int(config.get("max_batch_size", 0)) == 0, config
    assert tensors(config["input"], "data_type", "dims") == [("x", "TYPE_FP32", [1, 3, 224, 224])]
    assert tensors(config["output"], "data_type", "dims") == [
        ("output0", "TYPE_FP32", [1, 16, 222, 222])
    ]
    assert sum(int(g["count"]) for g in config["instance_group"]) == 2, config


def scrape(proc: ServerProcess) -> str:
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        return cast(bytes, response.read()).decode()


def gauge_by_version(metrics: str, name: str) -> dict[str, float]:
    pattern = re.compile(rf'^{name}\{{version="([^"]+)"\}} (\S+)$', re.MULTILINE)
    return {version: float(value) for version, value in pattern.findall(metrics)}


def test_every_preloaded_lean_runtime_is_loaded_while_the_plan_serves(
    triton: Triton,
    server: ServerProcess,
    triton_model: str,
    preloaded: list[str],
    x: np.ndarray,
    expected: np.ndarray,
) -> None:
    metrics = scrape(server)
    loaded = gauge_by_version(metrics, "trtserve_lean_runtimes_loaded")
    assert loaded == dict.fromkeys(preloaded, 1.0), metrics
    # Each version was loaded exactly once, preloaded or not.
    count = re.search(r"^trtserve_lean_runtime_load_seconds_count (\S+)$", metrics, re.MULTILINE)
    assert count is not None and float(count.group(1)) == len(preloaded), metrics
    references = gauge_by_version(metrics, "trtserve_lean_runtime_references")
    # The preload's hold and the served model's.
    assert references.get(str(VERSION), 0) >= 2, references
    out = triton("infer", server.address, triton_model, {"x": x})["output0"]
    assert out.tobytes() == expected.tobytes()
    print(f"lean runtimes loaded in one server process: {sorted(loaded)}")


def test_plan_of_a_version_not_installed_is_unavailable(
    triton: Triton, server: ServerProcess, runtimes_dir: Path
) -> None:
    old = TrtVersion(10, 0, 1, 6)
    if LeanStore(runtimes_dir).path_for(old) is not None:
        pytest.skip(f"{old} is installed here")
    plan = (plans_dir() / OLD_PLAN_NAME).read_bytes()
    status, message = triton(
        "load_model_error", server.address, "old", model_config("old"), {"file:1/model.plan": plan}
    )
    assert status == "StatusCode.UNAVAILABLE", (status, message)
    assert "10.0.1.6" in message and "trtserve runtimes install 10.0.1.6" in message, message
    assert ENGINE_FAILURE not in message, message


def test_server_without_the_plans_version_refuses_it_by_name(
    triton: Triton,
    tmp_path_factory: pytest.TempPathFactory,
    runtimes_dir: Path,
    preloaded: list[str],
    plan: bytes,
) -> None:
    others = tmp_path_factory.mktemp("runtimes-without-11.0")
    for version in preloaded:
        if version != str(VERSION):
            (others / version).symlink_to(runtimes_dir / version, target_is_directory=True)
    kept = installed_versions(others)
    assert str(VERSION) not in kept
    proc = launch(tmp_path_factory.mktemp("repository-without-11.0"), others, kept)
    try:
        status, message = triton(
            "load_model_error",
            proc.address,
            "conv",
            model_config("conv"),
            {"file:1/model.plan": plan},
        )
        config = tmp_path_factory.mktemp("cli-config-without-11.0") / "config.json"
        config.write_text(model_config("conv_cli"))
        done = upload_command(proc.address, plans_dir() / PLAN_NAME, "conv_cli", config)
    finally:
        stop(proc, f"without {VERSION} (lean runtimes {kept})")
    assert status == "StatusCode.UNAVAILABLE", (status, message)
    assert str(VERSION) in message and f"trtserve runtimes install {VERSION}" in message, message
    assert ENGINE_FAILURE not in message, message
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"trtserve runtimes install {VERSION}" in done.stderr, done.stderr
    assert ENGINE_FAILURE not in done.stderr, done.stderr


def cut(plan: bytes) -> bytes:
    return plan[:-1000]


def flip(offset: int) -> Callable[[bytes], bytes]:
    def corrupt(plan: bytes) -> bytes:
        data = bytearray(plan)
        data[offset] ^= 0x01
        return bytes(data)

    return corrupt


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str, str]] = {
    # name: (corruption, expected gRPC status, text the message must hold)
    "cut": (cut, "FAILED_PRECONDITION", "truncated"),
    "magic": (flip(0x00), "FAILED_PRECONDITION", "not a TensorRT plan"),
    "footer": (flip(-1), "FAILED_PRECONDITION", "footer"),
    # The major version byte 11 -> 10: a version that is not installed.
    "version": (flip(0x18), "UNAVAILABLE", "10.0.0.114"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_upload_is_refused_and_the_loaded_version_keeps_serving(
    server: ServerProcess,
    cli_model: str,
    plan: bytes,
    x: np.ndarray,
    expected: np.ndarray,
    corruption: str,
) -> None:
    corrupt, status, text = CORRUPTIONS[corruption]
    with InferenceClient(server.address, timeout=CALL_TIMEOUT_S) as client:
        served = client.infer(cli_model, [InferInput("x", x)]).model_version
        with pytest.raises(InferenceServerError) as raised:
            client.upload_model(cli_model, corrupt(plan), config_json=model_config(cli_model))
        error = raised.value
        assert error.code.name == status, error
        assert text in error.message and cli_model in error.message, error
        assert ENGINE_FAILURE not in error.message, error
        assert client.model_ready(cli_model)
        result = client.infer(cli_model, [InferInput("x", x)])
    assert result.model_version == served
    assert result.as_numpy("output0").tobytes() == expected.tobytes()


def test_corrupt_load_model_keeps_the_loaded_version_serving(
    triton: Triton,
    server: ServerProcess,
    triton_model: str,
    plan: bytes,
    x: np.ndarray,
    expected: np.ndarray,
) -> None:
    status, message = triton(
        "load_model_error",
        server.address,
        triton_model,
        model_config(triton_model),
        {"file:2/model.plan": cut(plan)},
    )
    assert status == "StatusCode.FAILED_PRECONDITION", (status, message)
    assert "truncated" in message and triton_model in message, message
    assert triton("is_model_ready", server.address, triton_model)
    out = triton("infer", server.address, triton_model, {"x": x})["output0"]
    assert out.tobytes() == expected.tobytes()


def payload_corruptions(plan: bytes) -> dict[str, bytes]:
    """Damage inside the engine and weight payloads: the header still reads, TensorRT decides."""
    from trtserve.server.runtime.plan_header import read_plan_header

    entries = {e.tag: e for e in read_plan_header(plan).entries}
    engine, weights = entries["ENGN"], entries["WGHT"]

    def flipped(offset: int) -> bytes:
        data = bytearray(plan)
        data[offset] ^= 0xFF
        return bytes(data)

    def zeroed(offset: int, size: int) -> bytes:
        data = bytearray(plan)
        data[offset : offset + size] = bytes(size)
        return bytes(data)

    return {
        "engine byte 4 flipped": flipped(engine.offset + 4),
        "engine byte 64 flipped": flipped(engine.offset + 64),
        "engine middle byte flipped": flipped(engine.offset + engine.size // 2),
        "engine 4 KiB zeroed": zeroed(engine.offset + engine.size // 3, 4096),
        "weights middle byte flipped": flipped(weights.offset + weights.size // 2),
    }


def test_corrupt_payloads_reach_tensorrt_and_never_crash_the_server(
    tmp_path: Path,
    runtimes_dir: Path,
    plan: bytes,
    x: np.ndarray,
    expected: np.ndarray,
) -> None:
    """Each damaged plan is refused with TensorRT's own words, or loads; the server lives on."""
    proc = launch(tmp_path / "repository", runtimes_dir, [str(VERSION)])
    outcomes: list[dict[str, str]] = []
    try:
        with InferenceClient(proc.address, timeout=CALL_TIMEOUT_S) as client:
            client.upload_model("victim", plan, config_json=model_config("victim", instances=1))
            for name, damaged in payload_corruptions(plan).items():
                try:
                    stored = client.upload_model(
                        "victim", damaged, config_json=model_config("victim", instances=1)
                    )
                    outcome = {"case": name, "status": "OK", "message": f"v{stored.version}"}
                except InferenceServerError as error:
                    outcome = {"case": name, "status": error.code.name, "message": error.message}
                assert proc.process.poll() is None, f"server died on {name}: {outcome}"
                result = client.infer("victim", [InferInput("x", x)])
                assert result.as_numpy("output0").shape == OUTPUT_SHAPE
                outcome["serving"] = (
                    f"version {result.model_version}, output equals good plan: "
                    + str(result.as_numpy("output0").tobytes() == expected.tobytes())
                )
                outcomes.append(outcome)
    finally:
        for outcome in outcomes:
            print(outcome)
        report = os.environ.get("TRTSERVE_GPU_REPORT")
        if report:
            Path(report).write_text(json.dumps(outcomes, indent=2))
        stop(proc, "corrupt payloads")
    refused = [o for o in outcomes if o["status"] != "OK"]
    assert all(o["status"] == "FAILED_PRECONDITION" for o in refused), refused
    # TensorRT's words come once, at the end, after what was tried and the likely causes.
    for o in refused:
        if ENGINE_FAILURE in o["message"]:
            assert o["message"].count(ENGINE_FAILURE) == 1, o
            assert "Tried: lean runtime 11.0.0.114" in o["message"], o
            causes, said = o["message"].index("Likely causes"), o["message"].index("TensorRT said:")
            assert causes < o["message"].index("damaged") < said, o
            assert o["message"].index(ENGINE_FAILURE) > said, o
