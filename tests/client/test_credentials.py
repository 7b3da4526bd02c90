"""Our client and CLI send a bearer token, so they work against a server that requires one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from server_process import ServerProcess, start_server

from trtserve.client import AsyncInferenceClient, InferenceClient, InferenceServerError
from trtserve.server.default_model import build_simple_model

ADMIN = "admin-token-0123456789abcdef"
INFER = "infer-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{ADMIN} admin\n{INFER} infer\n")
    proc = start_server(["--auth-tokens-file", str(tokens)], local_admin=False)
    yield proc
    proc.terminate()


def test_admin_token_loads_and_infer_token_infers(guarded: ServerProcess) -> None:
    config = '{"name": "tok", "platform": "onnxruntime_onnx", "max_batch_size": 8}'
    with InferenceClient(guarded.address, token=ADMIN) as admin:
        admin.load_model("tok", config=config, files={"1/model.onnx": build_simple_model()})
    x = np.ones((1, 16), np.float32)
    with InferenceClient(guarded.address, token=INFER) as client:
        result = client.infer("tok", [*_inputs(x)])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)
        with pytest.raises(InferenceServerError) as refused:
            client.unload_model("tok")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_no_token_is_unauthenticated(guarded: ServerProcess) -> None:
    with (
        InferenceClient(guarded.address, token="") as client,
        pytest.raises(InferenceServerError) as refused,
    ):
        client.model_metadata("simple")
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_async_client_sends_the_token_from_the_environment(
    guarded: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRTSERVE_TOKEN", INFER)

    async def scenario() -> list[str]:
        async with AsyncInferenceClient(guarded.address) as client:
            return [t.name for t in (await client.model_metadata("simple")).inputs]

    assert asyncio.run(scenario()) == ["INPUT0", "INPUT1"]


def _inputs(x: np.ndarray) -> list[object]:
    from trtserve.client import InferInput

    return [InferInput("INPUT0", x), InferInput("INPUT1", x)]
