"""A ModelManager over a repository folder with the ONNX Runtime backend, loaded, inspected
and closed in one call: what the repository tests need of a server's model side."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry

from trtserve.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtserve.server.metrics import ServerMetrics
from trtserve.server.models.manager import IndexEntry, ModelManager
from trtserve.server.repository.repository import ModelRepository

T = TypeVar("T")


def with_loaded_repository(root: Path, inspect: Callable[[ModelManager], Awaitable[T]]) -> T:
    """Load every model of `root` as a server starts, run `inspect`, close the manager."""
    backend = OnnxRuntimeBackend()

    async def main() -> T:
        manager = ModelManager(
            ModelRepository(root),
            {backend.platform: backend},
            ServerMetrics(CollectorRegistry()),
            default_max_queue_size=16,
        )
        await manager.load_all()
        try:
            return await inspect(manager)
        finally:
            await manager.close()

    return asyncio.run(main())


async def index(manager: ModelManager) -> list[IndexEntry]:
    """The repository index, as RepositoryIndex answers it."""
    return await manager.index()
