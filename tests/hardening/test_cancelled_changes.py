"""A model change whose caller goes away still ends in a commit or a rollback, never between.

The caller (a load or upload whose client hit its deadline) is cancelled while the backend is
loading the new version in a worker thread; the change must run on to its end, so the folder
holds exactly what serves and no engine is left loaded without a model to own it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from tiny_models import add_constant_model, write_model

from trtserve.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtserve.server.metrics import ServerMetrics
from trtserve.server.models.manager import ModelManager
from trtserve.server.repository.repository import ModelRepository

MODEL = "add"
STEP_TIMEOUT_S = 30.0


class HeldBackend(OnnxRuntimeBackend):
    """ONNX Runtime, with each load held until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.loading = threading.Event()
        self.go = threading.Event()

    def load(self, path: Path, settings: Any) -> Any:
        self.loading.set()
        assert self.go.wait(STEP_TIMEOUT_S), "the test never let the load go"
        return super().load(path, settings)


def test_a_change_whose_caller_is_cancelled_runs_to_its_commit(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "repository")
    write_model(repository.root, MODEL, 1, add_constant_model(1.0))
    backend = HeldBackend()

    async def main() -> tuple[bool, int, list[str]]:
        manager = ModelManager(
            repository,
            {backend.platform: backend},
            ServerMetrics(CollectorRegistry()),
            default_max_queue_size=16,
        )
        backend.go.set()
        await manager.load_all()
        backend.go.clear()
        backend.loading.clear()
        caller = asyncio.ensure_future(
            manager.load(MODEL, files={"2/model.onnx": add_constant_model(2.0)})
        )
        await asyncio.to_thread(backend.loading.wait, STEP_TIMEOUT_S)
        caller.cancel()  # the client's deadline passed while version 2 loads
        await asyncio.wait([caller])
        backend.go.set()
        # A reload waits for the model's change in progress, as any change of it would.
        await manager.load(MODEL)
        served = manager.get(MODEL).version
        await manager.close()
        files = sorted(str(p.relative_to(repository.root)) for p in repository.root.rglob("*"))
        return caller.cancelled(), served, files

    cancelled, served, files = asyncio.run(asyncio.wait_for(main(), 4 * STEP_TIMEOUT_S))
    assert cancelled
    # Version 2 was written, loaded and committed although its caller left: it serves, and
    # the folder holds no backup or temporary file.
    assert served == 2
    assert f"{MODEL}/2/model.onnx" in files, files
    assert not any(".backup-" in f or ".tmp-" in f for f in files), files
