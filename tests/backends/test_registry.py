"""The server's backends built from its settings; preloading and closing go through each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from trtserve.server.backends.base import Backend, LoadedModel
from trtserve.server.backends.registry import make_backends, preload_runtimes
from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.errors import Unavailable
from trtserve.server.runtime.cuda_device import cuda_device_count
from trtserve.server.settings import ServerSettings
from trtserve.server.specs import ModelSettings


class RecordingBackend(Backend):
    """A backend that records the versions it is asked to preload."""

    platform = "recording"
    default_filename = "model.bin"

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, path: Path, settings: ModelSettings) -> LoadedModel:
        raise NotImplementedError

    def preload(self, versions: Sequence[str]) -> list[str]:
        self.asked.append(list(versions))
        return list(versions)


def test_every_platform_has_its_backend(tmp_path: Path) -> None:
    settings = ServerSettings(runtimes_dir=tmp_path, probe_plans=False)
    backends = make_backends(settings, CollectorRegistry())
    assert sorted(backends) == ["onnxruntime_onnx", "tensorrt_plan"]
    tensorrt = backends["tensorrt_plan"]
    assert isinstance(tensorrt, TensorRTBackend)
    assert tensorrt.store.root == tmp_path and tensorrt.probe_plans is False


def test_a_backend_without_runtimes_preloads_nothing_and_closes() -> None:
    backend = make_backends(ServerSettings(), CollectorRegistry())["onnxruntime_onnx"]
    assert backend.preload(["10.3.0"]) == []
    backend.close()


def test_preload_asks_every_backend_only_when_versions_are_configured() -> None:
    backend = RecordingBackend()
    preload_runtimes(ServerSettings(), {backend.platform: backend})
    assert backend.asked == []
    preload_runtimes(ServerSettings(preload_runtimes=("10.3.0",)), {backend.platform: backend})
    assert backend.asked == [["10.3.0"]]


@pytest.mark.skipif(cuda_device_count() > 0, reason="checks the path without a GPU")
def test_preloading_tensorrt_runtimes_without_a_gpu_is_unavailable() -> None:
    settings = ServerSettings(preload_runtimes=("10.3.0",))
    with pytest.raises(Unavailable, match="cannot preload TensorRT lean runtimes"):
        preload_runtimes(settings, make_backends(settings, CollectorRegistry()))
