"""Where a model change takes effect: this process alone, or every worker of the server.

A load or unload a client asks for is applied through `ModelChanges`. One process applies it to
itself (`LocalChanges`); a worker of `serve --workers N` hands it to the supervisor, which
prepares it in every worker and commits it in all or none (server/workers/).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from trtserve.server.models.manager import ModelManager


class ModelChanges(Protocol):
    """Applies a model change that the manager has checked and written to the repository."""

    async def load(self, name: str) -> None:
        """Serve the model's newest version from the repository (replacing the one served)."""

    async def unload(self, name: str) -> None:
        """Stop serving the model."""


class LocalChanges:
    """Changes applied to one manager: this process is the whole server."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    async def load(self, name: str) -> None:
        await self._manager.prepare(name)
        await self._manager.commit(name)

    async def unload(self, name: str) -> None:
        await self._manager.unload_here(name)
