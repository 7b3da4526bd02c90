"""One loaded model version: its settings, tensors, instances and scheduler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from trtserve.server.backends.base import LoadedModel, ModelInstance
from trtserve.server.metrics import VersionMetrics
from trtserve.server.scheduler.batcher import ModelScheduler
from trtserve.server.specs import ModelIO, ModelSettings, TensorSpec


@dataclass
class ServingModel:
    """A model version ready to take requests."""

    name: str
    version: int
    settings: ModelSettings
    io: ModelIO
    loaded: LoadedModel
    instances: list[ModelInstance]
    scheduler: ModelScheduler
    metrics: VersionMetrics
    inputs: dict[str, TensorSpec] = field(init=False)
    outputs: dict[str, TensorSpec] = field(init=False)

    def __post_init__(self) -> None:
        # Shapes as clients send them: without the batch dimension when the model batches.
        self.inputs = {t.name: t for t in self.settings.inputs}
        self.outputs = {t.name: t for t in self.settings.outputs}

    async def close(self, drain: bool = True) -> None:
        """Finish (or fail) queued requests, then release instances and the model."""
        await self.scheduler.close(drain=drain)
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        # Instances (contexts, streams) go before the model (engine) they were made from.
        for instance in self.instances:
            instance.close()
        self.loaded.close()
