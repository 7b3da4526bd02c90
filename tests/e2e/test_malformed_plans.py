"""Damaged TensorRT plans uploaded to a live server (no GPU needed): each refused clearly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from server_process import ServerProcess, start_server

from trtserve.client import InferenceClient, InferenceServerError

PLAN = (
    Path(__file__).resolve().parents[2].parent / "shared" / "plans" / "conv_relu_trt11.0.0.114.plan"
)
CONFIG = '{"platform": "tensorrt_plan", "max_batch_size": 0}'


def flip(offset: int) -> Callable[[bytes], bytes]:
    def damage(plan: bytes) -> bytes:
        data = bytearray(plan)
        data[offset] ^= 0x01
        return bytes(data)

    return damage


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "cut": (lambda p: p[:-1000], "truncated plan"),
    "magic": (flip(0), "not a TensorRT plan"),
    "footer": (flip(-1), "bad plan footer"),
    "size field": (flip(0x10), "the header says 383205 bytes"),
    "empty": (lambda p: b"", "not a TensorRT plan"),
    "entry table": (flip(0x20), "ENGN"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not PLAN.is_file():
        pytest.skip(f"the real plans are not at {PLAN.parent}")
    proc = start_server(["--repository", str(tmp_path_factory.mktemp("plans-repository"))])
    yield proc
    proc.terminate()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_plan_is_refused_with_the_reason(server: ServerProcess, damage: str) -> None:
    corrupt, reason = DAMAGE[damage]
    with InferenceClient(server.address, timeout=60) as client:
        with pytest.raises(InferenceServerError) as refused:
            client.upload_model("plan_" + damage.replace(" ", "_"), corrupt(PLAN.read_bytes()),
                                config_json=CONFIG)  # fmt: skip
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION, refused.value
        assert reason in refused.value.message, refused.value.message
        assert client.server_ready()


def test_intact_plan_without_a_gpu_is_unavailable_not_crashed(server: ServerProcess) -> None:
    with InferenceClient(server.address, timeout=60) as client:
        with pytest.raises(InferenceServerError) as refused:
            client.upload_model("intact", PLAN.read_bytes(), config_json=CONFIG)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "no CUDA device" in refused.value.message
        assert client.server_ready()
