"""System shared memory with stock tritonclient against real trtserve processes (no GPU).

The scenarios live in triton_shm_driver.py and run in a spawned interpreter (tritonclient
cannot be imported next to trtserve.protocol; see test_tritonclient.py). Every shared-memory
object they create is named after this process and removed even when a scenario fails; the
last test checks that none is left.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import MetricSamples
from server_process import ServerProcess, start_server

E2E = Path(__file__).resolve().parent
DRIVER = "triton_shm_driver"
SCENARIO_TIMEOUT_S = 120.0
OBJECT_DIR = Path("/dev/shm")
# Every object and link the scenarios make starts with this.
PREFIX = f"trtserve-test-{os.getpid()}"
MAX_REGIONS = 2
MAX_MB = 1
INFER_TOKEN = "shm-infer-token-0123456789abcdef"
CLIENTS = 8
REQUESTS_PER_CLIENT = 50


class _ByName:
    """Pickles as `reduce`: the child rebuilds the object, this process never imports it."""

    def __init__(self, reduce: tuple[Any, ...]) -> None:
        self._reduce = reduce

    def __reduce__(self) -> tuple[Any, ...]:
        return self._reduce


def run(pool: ProcessPoolExecutor, name: str, *args: object) -> Any:
    """Run `triton_shm_driver.<name>(*args)` in the child; its result."""
    module = _ByName((importlib.import_module, (DRIVER,)))
    function = _ByName((getattr, (module, name)))
    return pool.submit(function, *args).result(timeout=SCENARIO_TIMEOUT_S)  # type: ignore[arg-type]


def _leftovers() -> list[Path]:
    return sorted(OBJECT_DIR.glob(f"{PREFIX}*"))


@pytest.fixture(scope="module")
def driver() -> Iterator[ProcessPoolExecutor]:
    """One fresh interpreter for every scenario of this module."""
    if not OBJECT_DIR.is_dir():
        pytest.skip(f"no {OBJECT_DIR}: POSIX shared memory is not a folder here")
    if str(E2E) not in sys.path:
        sys.path.insert(0, str(E2E))
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)
    # Whatever a failed scenario left is removed here, so no run leaves objects behind.
    for path in _leftovers():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def shm_server() -> Iterator[ServerProcess]:
    """A server of this module's own: region lists and metrics see only its tests."""
    proc = start_server()
    yield proc
    assert proc.terminate() == 0, "".join(proc.output)


def _serving(proc: ServerProcess) -> None:
    assert proc.process.poll() is None, "".join(proc.output)


def test_driver_imports_no_trtserve() -> None:
    source = (E2E / f"{DRIVER}.py").read_text()
    assert "import trtserve" not in source and "from trtserve" not in source


def test_inputs_and_outputs_by_reference(
    driver: ProcessPoolExecutor, shm_server: ServerProcess
) -> None:
    run(driver, "check_inputs_and_outputs_by_reference", shm_server.address, PREFIX)


def test_concurrent_clients_share_one_region(
    driver: ProcessPoolExecutor, shm_server: ServerProcess
) -> None:
    inferences, executions = run(driver, "model_counts", shm_server.address)
    run(
        driver,
        "check_concurrent_clients",
        shm_server.address,
        PREFIX,
        CLIENTS,
        REQUESTS_PER_CLIENT,
    )
    after_inferences, after_executions = run(driver, "model_counts", shm_server.address)
    total = CLIENTS * REQUESTS_PER_CLIENT
    assert after_inferences - inferences == total
    # Requests of one row from 8 clients at once: the dynamic batcher ran some together.
    assert after_executions - executions < total, (after_executions - executions, total)


def test_status_and_unregister(driver: ProcessPoolExecutor, shm_server: ServerProcess) -> None:
    run(driver, "check_status_and_unregister", shm_server.address, PREFIX)


def test_bad_requests(driver: ProcessPoolExecutor, shm_server: ServerProcess) -> None:
    run(driver, "check_bad_requests", shm_server.address, PREFIX)
    _serving(shm_server)


def test_object_shrunk_after_registration(
    driver: ProcessPoolExecutor, shm_server: ServerProcess
) -> None:
    run(driver, "check_shrunk_object", shm_server.address, PREFIX)
    _serving(shm_server)


def test_server_extensions(driver: ProcessPoolExecutor, shm_server: ServerProcess) -> None:
    extensions = run(driver, "server_extensions", shm_server.address)
    assert "system_shared_memory" in extensions, extensions
    assert "cuda_shared_memory" not in extensions, extensions


def test_metrics(
    driver: ProcessPoolExecutor,
    shm_server: ServerProcess,
    scrape_metrics: Callable[[int], MetricSamples],
) -> None:
    def scrape() -> MetricSamples:
        return scrape_metrics(shm_server.metrics_port)

    def tensor_bytes(samples: MetricSamples, direction: str, path: str) -> float:
        return samples.value("trtserve_tensor_bytes_total", direction=direction, path=path)

    before = scrape()
    assert before.value("trtserve_shared_memory_regions", kind="system") == 0
    assert before.value("trtserve_shared_memory_bytes", kind="system") == 0
    address, size = shm_server.address, 4096
    run(driver, "hold_region", address, f"/{PREFIX}-metrics", "metrics", size)
    try:
        held = scrape()
        assert held.value("trtserve_shared_memory_regions", kind="system") == 1
        assert held.value("trtserve_shared_memory_bytes", kind="system") == size
        assert held.value("trtserve_shared_memory_regions", kind="cuda") == 0
        # Two rows all by reference, then three rows with INPUT1 and OUTPUT1 inline.
        run(driver, "infer_on_held", address, "metrics", 2, False)
        run(driver, "infer_on_held", address, "metrics", 3, True)
        after = scrape()
    finally:
        run(driver, "release_region", address, "metrics")
    row = 16 * 4
    expected = {
        ("input", "system_shared_memory"): (2 * 2 + 3) * row,
        ("input", "inline"): 3 * row,
        ("output", "system_shared_memory"): (2 * 2 + 3) * row,
        ("output", "inline"): 3 * row,
        ("input", "cuda_shared_memory"): 0,
        ("output", "cuda_shared_memory"): 0,
    }
    counted = {key: tensor_bytes(after, *key) - tensor_bytes(before, *key) for key in expected}
    assert counted == expected
    released = scrape()
    assert released.value("trtserve_shared_memory_regions", kind="system") == 0
    assert released.value("trtserve_shared_memory_bytes", kind="system") == 0


def test_stream_infer(driver: ProcessPoolExecutor, shm_server: ServerProcess) -> None:
    run(driver, "check_stream", shm_server.address, PREFIX)


def test_limits(driver: ProcessPoolExecutor) -> None:
    proc = start_server(
        ["--max-shared-memory-regions", str(MAX_REGIONS), "--max-shared-memory-mb", str(MAX_MB)]
    )
    try:
        run(driver, "check_limits", proc.address, PREFIX, MAX_REGIONS, MAX_MB << 20)
        _serving(proc)
    finally:
        assert proc.terminate() == 0, "".join(proc.output)


def test_auth(driver: ProcessPoolExecutor, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{INFER_TOKEN} infer\n")
    proc = start_server(["--auth-tokens-file", str(tokens)], local_admin=False)
    try:
        run(driver, "check_auth", proc.address, PREFIX, INFER_TOKEN)
    finally:
        assert proc.terminate() == 0, "".join(proc.output)


def test_nothing_left_behind(driver: ProcessPoolExecutor) -> None:
    # Last in the module: every scenario destroyed the objects it made.
    assert _leftovers() == []
