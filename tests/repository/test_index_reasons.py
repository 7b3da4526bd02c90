"""RepositoryIndex says why a model of the repository is not serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from trtserve.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtserve.server.default_model import SIMPLE_CONFIG, build_simple_model
from trtserve.server.metrics import ServerMetrics
from trtserve.server.models.manager import ModelManager
from trtserve.server.repository.repository import ModelRepository


def test_a_model_whose_config_does_not_parse_shows_the_parse_error(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    for name, config in (("good", SIMPLE_CONFIG), ("typo", "max_batch_size 8 {\n")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(build_simple_model())
        (root / name / "config.pbtxt").write_text(config.replace('"simple"', f'"{name}"'))
    backend = OnnxRuntimeBackend()

    async def main() -> dict[str, tuple[str, str]]:
        manager = ModelManager(
            ModelRepository(root),
            {backend.platform: backend},
            ServerMetrics(CollectorRegistry()),
            default_max_queue_size=16,
        )
        await manager.load_all()
        entries = {e.name: (e.state, e.reason) for e in await manager.index()}
        await manager.close()
        return entries

    entries = asyncio.run(main())
    assert entries["good"] == ("READY", "")
    state, reason = entries["typo"]
    assert state == "UNAVAILABLE"
    assert "typo" in reason and "does not parse" in reason and "Expected" in reason, reason
