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
