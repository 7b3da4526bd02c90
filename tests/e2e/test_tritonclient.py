"""tritonclient[grpc] against a real trtserve process: every RPC the client has.

tritonclient cannot be imported next to trtserve.protocol (both register `inference.*` in
protobuf's default pool), so each scenario of triton_driver.py runs in a spawned interpreter
that imports only that module, and this process never imports it: the scenario travels to the
child as a reference by name. A failed assertion comes back as the child's AssertionError.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from server_process import ServerProcess, start_server

from trtserve.server.default_model import build_simple_model, write_default_repository

E2E = Path(__file__).resolve().parent
DRIVER = "triton_driver"
SCENARIO_TIMEOUT_S = 120.0


class _ByName:
    """Pickles as `reduce`: the child rebuilds the object, this process never imports it."""

    def __init__(self, reduce: tuple[Any, ...]) -> None:
        self._reduce = reduce

    def __reduce__(self) -> tuple[Any, ...]:
        return self._reduce


def scenario(name: str) -> Callable[..., None]:
    """`triton_driver.<name>`, resolved in the child process."""
    module = _ByName((importlib.import_module, (DRIVER,)))
    return cast(Callable[..., None], _ByName((getattr, (module, name))))


@pytest.fixture(scope="module")
def driver() -> Iterator[ProcessPoolExecutor]:
    """One fresh interpreter for every tritonclient scenario of this module."""
    # The child inherits sys.path from this process, so it finds the driver as a top-level module.
    if str(E2E) not in sys.path:
        sys.path.insert(0, str(E2E))
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the built-in `simple` model."""
    root = tmp_path_factory.mktemp("triton-repository")
    write_default_repository(root)
    return root


@pytest.fixture(scope="module")
def repository_server(repository: Path) -> Iterator[ServerProcess]:
    """A server on a repository of its own, for loading and unloading models."""
    proc = start_server(["--repository", str(repository)])
    yield proc
    proc.terminate()


@pytest.fixture()
def fresh_server() -> Iterator[ServerProcess]:
    """A server that has answered no inference request yet."""
    proc = start_server()
    yield proc
    proc.terminate()


def run(pool: ProcessPoolExecutor, name: str, *args: object) -> None:
    pool.submit(scenario(name), *args).result(timeout=SCENARIO_TIMEOUT_S)


def test_driver_imports_no_trtserve() -> None:
    # The child must never import trtserve.protocol next to tritonclient.
    source = (E2E / f"{DRIVER}.py").read_text()
    assert "import trtserve" not in source and "from trtserve" not in source


def test_server_and_model_metadata(driver: ProcessPoolExecutor, server_address: str) -> None:
    run(driver, "check_server_and_model_metadata", server_address)


def test_statistics_before_first_request(
    driver: ProcessPoolExecutor, fresh_server: ServerProcess
) -> None:
    run(driver, "check_statistics_before_first_request", fresh_server.address)


def test_infer(driver: ProcessPoolExecutor, server_address: str) -> None:
    run(driver, "check_infer", server_address)


def test_async_infer(driver: ProcessPoolExecutor, server_address: str) -> None:
    run(driver, "check_async_infer", server_address)


def test_stream_infer(driver: ProcessPoolExecutor, server_address: str) -> None:
    run(driver, "check_stream_infer", server_address)


def test_unimplemented_rpcs(driver: ProcessPoolExecutor, server_address: str) -> None:
    run(driver, "check_unimplemented", server_address)


def test_aio_infer(driver: ProcessPoolExecutor, server_address: str) -> None:
    run(driver, "check_aio_infer", server_address)


def test_load_and_unload(
    driver: ProcessPoolExecutor, repository_server: ServerProcess, repository: Path
) -> None:
    onnx_bytes = build_simple_model()
    run(driver, "check_load_and_unload", repository_server.address, onnx_bytes)
    # What load_model sent landed in the repository, so it survives a restart.
    folder = repository / "uploaded"
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_bytes
    assert '"uploaded"' in (folder / "config.json").read_text()
    assert repository_server.process.poll() is None


def test_several_versions_of_a_model_serve_at_once(
    driver: ProcessPoolExecutor, repository_server: ServerProcess
) -> None:
    run(driver, "check_versions", repository_server.address, build_simple_model())
