"""Shared memory through our client against a real server: regions, references, bench.

`server` (tests/conftest.py) serves the built-in `simple` model: INPUT0, INPUT1 FP32 [-1, 16];
OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1. Tensor bytes by path come from the
server's metrics, so each test also checks that data went by reference and not inline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from conftest import MetricSamples
from server_process import ServerProcess

from trtserve.cli.main import main
from trtserve.client import (
    AsyncInferenceClient,
    CudaSharedMemoryRegion,
    InferenceClient,
    InferenceServerError,
    InferInput,
    SystemRegionStatus,
    SystemSharedMemoryRegion,
    TensorMetadata,
    run_load,
)
from trtserve.client.shared_memory import SHM_DIR

Scrape = Callable[[int], MetricSamples]
TENSOR_BYTES = "trtserve_tensor_bytes_total"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tensor_bytes(samples: MetricSamples) -> dict[tuple[str, str], float]:
    return {
        (direction, path): samples.value(TENSOR_BYTES, direction=direction, path=path)
        for direction in ("input", "output")
        for path in ("inline", "system_shared_memory")
    }


def delta(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: after[k] - before[k] for k in before}


def bench_objects() -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith("trtserve-bench-"))


@pytest.fixture
def client(server: ServerProcess) -> Iterator[InferenceClient]:
    with InferenceClient(server.address, timeout=30) as c:
        yield c


@pytest.fixture
def region() -> Iterator[SystemSharedMemoryRegion]:
    name = unique("e2e")
    with SystemSharedMemoryRegion.create(name, f"/trtserve-{name}", 4096) as r:
        yield r


def test_infer_by_reference_equals_inline_and_status_follows_registration(
    client: InferenceClient,
    region: SystemSharedMemoryRegion,
    server: ServerProcess,
    scrape_metrics: Scrape,
) -> None:
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((3, 16)).astype(np.float32) for _ in range(2))
    inline = client.infer("simple", [InferInput("INPUT0", a), InferInput("INPUT1", b)])

    client.register_system_shared_memory(region.name, region.key, region.byte_size)
    assert client.system_shared_memory_status(region.name) == [
        SystemRegionStatus(region.name, region.key, 0, 4096)
    ]
    assert region.name in [s.name for s in client.system_shared_memory_status()]

    before = tensor_bytes(scrape_metrics(server.metrics_port))
    inputs = [region.write_input("INPUT0", a, 0), region.write_input("INPUT1", b, 1024)]
    outputs = [
        region.output_reference("OUTPUT0", 192, 2048),
        region.output_reference("OUTPUT1", 192, 3072),
    ]
    result = client.infer("simple", inputs, outputs)
    moved = delta(before, tensor_bytes(scrape_metrics(server.metrics_port)))

    assert result.outputs == {}
    assert result.shared_memory_outputs == {
        "OUTPUT0": TensorMetadata("OUTPUT0", "FP32", (3, 16)),
        "OUTPUT1": TensorMetadata("OUTPUT1", "FP32", (3, 16)),
    }
    np.testing.assert_array_equal(region.read("FP32", (3, 16), 2048), inline.as_numpy("OUTPUT0"))
    np.testing.assert_array_equal(region.read("FP32", (3, 16), 3072), inline.as_numpy("OUTPUT1"))
    assert moved == {
        ("input", "inline"): 0,
        ("input", "system_shared_memory"): 384,
        ("output", "inline"): 0,
        ("output", "system_shared_memory"): 384,
    }

    client.unregister_system_shared_memory(region.name)
    assert region.name not in [s.name for s in client.system_shared_memory_status()]
    with pytest.raises(InferenceServerError) as error:
        client.system_shared_memory_status(region.name)
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_asyncio_client_mixes_references_and_inline_tensors(
    server: ServerProcess, region: SystemSharedMemoryRegion
) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)

    async def run() -> None:
        async with AsyncInferenceClient(server.address, timeout=30) as client:
            await client.register_system_shared_memory(region.name, region.key, 2048, 0)
            statuses = await client.system_shared_memory_status(region.name)
            assert statuses == [SystemRegionStatus(region.name, region.key, 0, 2048)]
            result = await client.infer(
                "simple",
                [region.write_input("INPUT0", a, 64), InferInput("INPUT1", b)],
                [region.output_reference("OUTPUT0", 128, 512), "OUTPUT1"],
            )
            assert list(result.shared_memory_outputs) == ["OUTPUT0"]
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
            np.testing.assert_array_equal(region.read("FP32", (2, 16), 512), a + b)
            await client.unregister_system_shared_memory(region.name)
            names = [s.name for s in await client.system_shared_memory_status()]
            assert region.name not in names

    asyncio.run(run())


def test_errors_of_references_carry_the_servers_status(
    client: InferenceClient, region: SystemSharedMemoryRegion
) -> None:
    a = np.zeros((1, 16), dtype=np.float32)
    with pytest.raises(InferenceServerError) as error:
        client.infer("simple", [region.write_input("INPUT0", a), InferInput("INPUT1", a)])
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert "INPUT0" in error.value.message
    missing = unique("/trtserve-missing")
    with pytest.raises(InferenceServerError) as error:
        client.register_system_shared_memory(unique("gone"), missing, 64)
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert missing in error.value.message
    client.register_system_shared_memory(region.name, region.key, 64)
    try:
        with pytest.raises(InferenceServerError) as error:
            client.register_system_shared_memory(region.name, region.key, 64)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "already registered" in error.value.message
    finally:
        client.unregister_system_shared_memory(region.name)


def test_unregister_all_removes_every_system_region(client: InferenceClient) -> None:
    names = [unique("all") for _ in range(2)]
    regions = [SystemSharedMemoryRegion.create(n, f"/trtserve-{n}", 64) for n in names]
    try:
        for r in regions:
            client.register_system_shared_memory(r.name, r.key, r.byte_size)
        assert set(names) <= {s.name for s in client.system_shared_memory_status()}
        client.unregister_system_shared_memory()
        assert client.system_shared_memory_status() == []
    finally:
        for r in regions:
            r.destroy()


def test_cli_bench_with_system_shared_memory(
    server: ServerProcess, scrape_metrics: Scrape, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tensor_bytes(scrape_metrics(server.metrics_port))
    args = ["bench", "simple", "--address", server.address, "--concurrency", "3"]
    args += ["--requests", "30", "--shared-memory", "system", "--json", "--no-progress"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    moved = delta(before, tensor_bytes(scrape_metrics(server.metrics_port)))
    assert (result["count"], result["errors"], result["shared_memory"]) == (30, {}, "system")
    # One probe inline sizes the regions; the warm-up and the 30 timed go by reference.
    assert moved == {
        ("input", "inline"): 128,
        ("input", "system_shared_memory"): 31 * 128,
        ("output", "inline"): 128,
        ("output", "system_shared_memory"): 31 * 128,
    }
    assert bench_objects() == []
    with InferenceClient(server.address) as client:
        assert client.system_shared_memory_status() == []


def test_load_processes_with_system_shared_memory(server: ServerProcess) -> None:
    inputs = [InferInput(n, np.ones((2, 16), dtype=np.float32)) for n in ("INPUT0", "INPUT1")]
    result = run_load(
        server.address,
        "simple",
        inputs,
        concurrency=4,
        requests=40,
        processes=2,
        shared_memory="system",
    )
    assert (result.count, result.errors) == (40, {})
    assert bench_objects() == []
    with InferenceClient(server.address) as client:
        assert client.system_shared_memory_status() == []


def test_bench_refused_a_region_unregisters_and_removes_the_others(server: ServerProcess) -> None:
    # The server registers 64 regions at most (its default): the 65th worker's is refused.
    inputs = [InferInput(n, np.ones((1, 16), dtype=np.float32)) for n in ("INPUT0", "INPUT1")]
    with pytest.raises(InferenceServerError) as error:
        run_load(
            server.address, "simple", inputs, concurrency=65, requests=65, shared_memory="system"
        )
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bench_objects() == []
    with InferenceClient(server.address) as client:
        assert client.system_shared_memory_status() == []


def test_bench_interrupted_releases_its_regions(server: ServerProcess) -> None:
    args = ["bench", "simple", "--address", server.address, "--duration", "120"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "trtserve.cli.main", *args, "--shared-memory", "system"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Python turns SIGINT into KeyboardInterrupt only if it was not inherited as ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert bench.stderr is not None
        # The progress bar ("0req [00:00, ...]") appears once the regions are registered and
        # the run has begun; anything the process logs before it is read past.
        said = ""
        while "req [" not in said:
            char = bench.stderr.read(1)
            assert char, f"the bench ended before its run began: {said!r}"
            said += char
        assert len(bench_objects()) == 8, f"the bench did not begin its run: {said!r}"
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=60)
    finally:
        bench.kill()
    assert bench.returncode == 130, err
    assert "interrupted" in err
    assert bench_objects() == []
    with InferenceClient(server.address) as client:
        assert client.system_shared_memory_status() == []


@pytest.mark.gpu
def test_cuda_region_by_reference(server: ServerProcess) -> None:
    try:
        region = CudaSharedMemoryRegion.create(unique("gpu"), 4096)
    except Exception as e:  # no bindings, or no GPU here
        pytest.skip(f"no CUDA here: {e}")
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    with region, InferenceClient(server.address, timeout=30) as client:
        try:
            client.register_cuda_shared_memory(region.name, region.raw_handle(), 0, 4096)
        except InferenceServerError as e:
            if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                pytest.skip(f"the server sees no GPU: {e.message}")
            raise
        try:
            statuses = client.cuda_shared_memory_status(region.name)
            assert [(s.name, s.device_id, s.byte_size) for s in statuses] == [
                (region.name, 0, 4096)
            ]
            result = client.infer(
                "simple",
                [region.write_input("INPUT0", a, 0), region.write_input("INPUT1", a, 256)],
                [
                    region.output_reference("OUTPUT0", 128, 512),
                    region.output_reference("OUTPUT1", 128, 1024),
                ],
            )
            assert set(result.shared_memory_outputs) == {"OUTPUT0", "OUTPUT1"}
            np.testing.assert_array_equal(region.read("FP32", (2, 16), 512), a + a)
            np.testing.assert_array_equal(region.read("FP32", (2, 16), 1024), a - a)
        finally:
            client.unregister_cuda_shared_memory(region.name)
        assert region.name not in [s.name for s in client.cuda_shared_memory_status()]
