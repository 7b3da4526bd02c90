"""tritonclient calls against a running trtserve serving TensorRT plans, for test_server_gpu.py.

tritonclient's generated protobuf modules register the same `inference.*` names as
trtserve.protocol in protobuf's default descriptor pool, so both cannot live in one process.
This module therefore imports only tritonclient, numpy and the standard library, and
test_server_gpu.py runs its functions in a spawned interpreter. Everything returned is plain
data (arrays, dicts, strings), which pickles back to the test process.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

# Bounds every wait for the server, so a hang fails the test instead of blocking it. A plan
# load deserializes an engine and creates contexts: seconds, not minutes.
TIMEOUT_S = 120.0

_Call = TypeVar("_Call", bound=Callable[..., Any])


def remote(function: _Call) -> _Call:
    """Re-raise any failure as an AssertionError holding the traceback as text.

    tritonclient's exceptions and protobuf messages do not pickle back to the test process.
    """

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        try:
            return function(*args)
        except BaseException:
            raise AssertionError(traceback.format_exc()) from None

    return run  # type: ignore[return-value]


def _client(address: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(address)


@remote
def load_model(address: str, name: str, config: str, files: Mapping[str, bytes]) -> None:
    """load_model with a config and files; fails unless the model is ready afterwards."""
    client = _client(address)
    try:
        client.load_model(name, config=config, files=dict(files), client_timeout=TIMEOUT_S)
        assert client.is_model_ready(name, client_timeout=TIMEOUT_S), f"{name} is not ready"
    finally:
        client.close()


@remote
def load_model_error(
    address: str, name: str, config: str, files: Mapping[str, bytes]
) -> tuple[str, str]:
    """load_model that must fail: the error's status ("StatusCode.UNAVAILABLE") and message."""
    client = _client(address)
    try:
        client.load_model(name, config=config, files=dict(files), client_timeout=TIMEOUT_S)
    except InferenceServerException as error:
        return str(error.status()), str(error.message())
    finally:
        client.close()
    raise AssertionError(f"load_model('{name}') succeeded; an error was expected")


@remote
def infer(address: str, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One blocking infer; every output of the response as a writable array."""
    client = _client(address)
    try:
        tensors = []
        for tensor_name, value in inputs.items():
            tensor = grpcclient.InferInput(tensor_name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        result = client.infer(name, tensors, client_timeout=TIMEOUT_S)
        response = result.get_response()
        return {out.name: np.array(result.as_numpy(out.name)) for out in response.outputs}
    finally:
        client.close()


@remote
def metadata_and_config(address: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """get_model_metadata and get_model_config as JSON dicts."""
    client = _client(address)
    try:
        metadata = client.get_model_metadata(name, as_json=True, client_timeout=TIMEOUT_S)
        config = client.get_model_config(name, as_json=True, client_timeout=TIMEOUT_S)
        return dict(metadata), dict(config["config"])
    finally:
        client.close()


@remote
def is_model_ready(address: str, name: str) -> bool:
    client = _client(address)
    try:
        return bool(client.is_model_ready(name, client_timeout=TIMEOUT_S))
    finally:
        client.close()


def _region(kind: str, name: str, byte_size: int) -> Any:
    """A new region of `kind` ("system" or "cuda", device 0), from tritonclient's utilities."""
    if kind == "system":
        return _utilities(kind).create_shared_memory_region(name, f"/{name}", byte_size)
    return _utilities(kind).create_shared_memory_region(name, byte_size, 0)


def _register(
    client: grpcclient.InferenceServerClient, kind: str, name: str, handle: Any, size: int
) -> None:
    if kind == "system":
        client.register_system_shared_memory(name, f"/{name}", size, client_timeout=TIMEOUT_S)
    else:
        raw = _utilities(kind).get_raw_handle(handle)
        client.register_cuda_shared_memory(name, raw, 0, size, client_timeout=TIMEOUT_S)


def _unregister(client: grpcclient.InferenceServerClient, kind: str, name: str) -> None:
    if kind == "system":
        client.unregister_system_shared_memory(name)
    else:
        client.unregister_cuda_shared_memory(name)


def _utilities(kind: str) -> Any:
    if kind == "system":
        import tritonclient.utils.shared_memory as shm

        return shm
    import tritonclient.utils.cuda_shared_memory as cudashm

    return cudashm


def _write(kind: str, handle: Any, data: np.ndarray, offset: int) -> None:
    """Write `data` at `offset` of a region (the CUDA utility writes from 0 only: pad)."""
    utilities = _utilities(kind)
    if kind == "system":
        utilities.set_shared_memory_region(handle, [data], offset=offset)
    else:
        padding = [np.zeros(offset, np.uint8)] if offset else []
        utilities.set_shared_memory_region(handle, [*padding, data])


def _read(kind: str, handle: Any, size: int, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """The FP32 tensor of `shape` at `offset` of a region of `size` bytes."""
    utilities = _utilities(kind)
    if kind == "system":
        return np.array(
            utilities.get_contents_as_numpy(handle, np.float32, list(shape), offset=offset)
        )
    whole = np.array(utilities.get_contents_as_numpy(handle, np.uint8, [size]))
    nbytes = int(np.prod(shape)) * 4
    return whole[offset : offset + nbytes].view(np.float32).reshape(shape)


@remote
def infer_by_reference(
    address: str,
    name: str,
    kind: str,
    x: np.ndarray,
    out_shape: tuple[int, ...],
    offset: int,
    requests: int,
    tag: str,
) -> list[np.ndarray]:
    """`requests` infers with input and output in one region of `kind`, both at `offset`
    (input first, output after it); each output as read back from the region."""
    utilities = _utilities(kind)
    out_bytes = int(np.prod(out_shape)) * 4
    size = offset + x.nbytes + offset + out_bytes
    region = f"trtserve-{kind}-{tag}"
    handle = _region(kind, region, size)
    client = _client(address)
    try:
        _register(client, kind, region, handle, size)
        outputs = []
        for i in range(requests):
            data = x + np.float32(i)
            _write(kind, handle, data, offset)
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_shared_memory(region, x.nbytes, offset=offset)
            wanted = grpcclient.InferRequestedOutput("output0")
            out_offset = offset + x.nbytes + offset
            wanted.set_shared_memory(region, out_bytes, offset=out_offset)
            result = client.infer(name, [tensor], outputs=[wanted], client_timeout=TIMEOUT_S)
            described = result.get_output("output0")
            assert list(described.shape) == list(out_shape), described
            assert result.get_response().raw_output_contents[0] == b""
            outputs.append(_read(kind, handle, size, out_offset, out_shape))
        return outputs
    finally:
        _unregister(client, kind, region)
        client.close()
        utilities.destroy_shared_memory_region(handle)


@remote
def cuda_registration_errors(address: str) -> dict[str, tuple[str, str]]:
    """Status and message of each bad CUDA registration."""
    import tritonclient.utils.cuda_shared_memory as cudashm

    handle = cudashm.create_shared_memory_region("trtserve-bad", 1024, 0)
    raw = cudashm.get_raw_handle(handle)
    client = _client(address)
    cases: dict[str, Callable[[], object]] = {
        "device": lambda: client.register_cuda_shared_memory("bad-device", raw, 99, 1024),
        "larger": lambda: client.register_cuda_shared_memory("bad-size", raw, 0, 1 << 30),
        "garbage": lambda: client.register_cuda_shared_memory(
            "bad-handle", __import__("base64").b64encode(b"\x07" * 64), 0, 1024
        ),
    }
    found: dict[str, tuple[str, str]] = {}
    try:
        for case, call in cases.items():
            try:
                call()
            except InferenceServerException as error:
                found[case] = (str(error.status()), str(error.message()))
            else:
                found[case] = ("OK", "")
        status = client.get_cuda_shared_memory_status(as_json=True)
        found["left registered"] = ("", str(status))
        return found
    finally:
        client.close()
        cudashm.destroy_shared_memory_region(handle)


@remote
def server_extensions(address: str) -> list[str]:
    client = _client(address)
    try:
        return list(client.get_server_metadata(client_timeout=TIMEOUT_S).extensions)
    finally:
        client.close()
