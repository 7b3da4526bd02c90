"""Loads, reloads and unloads models, and tracks the state of each.

A reload builds the new version completely (backend load, instances, scheduler) before it
replaces the serving one, so a model that fails to load leaves the previous version serving.
The two steps are separate calls, `prepare` and `commit` (or `abort`), so that several worker
processes can each prepare a version and then all commit it or all abort it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from trtserve.server.backends.base import Backend, LoadedModel, ModelInstance, Placement
from trtserve.server.errors import FailedPrecondition, NotFound, ServerError, Unavailable
from trtserve.server.metrics import ServerMetrics
from trtserve.server.model_state import ModelState
from trtserve.server.models.changes import LocalChanges, ModelChanges
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.models.warmup import run_warmup
from trtserve.server.repository.model_config import complete_settings, parse_config_text
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.repository.staging import StagedFile
from trtserve.server.repository.transaction import (
    RepositoryChange,
    recover_interrupted,
)
from trtserve.server.scheduler.batcher import ModelScheduler, SchedulerConfig
from trtserve.server.specs import DeviceKind, ModelSettings

log = logging.getLogger(__name__)

# The reason of a model a client unloaded.
UNLOADED = "unloaded"


@dataclass
class ModelRecord:
    """What the manager knows of one model name."""

    name: str
    state: ModelState
    reason: str = ""
    serving: ServingModel | None = None


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index."""

    name: str
    version: str
    state: str
    reason: str


class ModelManager:
    """The set of models this server knows, loaded from one repository."""

    def __init__(
        self,
        repository: ModelRepository,
        backends: Mapping[str, Backend],
        metrics: ServerMetrics,
        *,
        default_max_queue_size: int,
        max_inline_execution_us: int = 0,
    ) -> None:
        self.repository = repository
        self._backends = dict(backends)
        self._metrics = metrics
        self._default_max_queue_size = default_max_queue_size
        self._max_inline_execution_us = max_inline_execution_us
        self._records: dict[str, ModelRecord] = {}
        # Versions built by `prepare`, waiting for `commit` or `abort`.
        self._prepared: dict[str, ServingModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Where a client's load or unload is applied; a worker process replaces it.
        self.changes: ModelChanges = LocalChanges(self)
        # Called on every state change; the API layer keeps per-model health with it.
        self.on_state_change: Callable[[str, ModelState], None] | None = None

    async def recover(self) -> None:
        """Undo what a crash left half-done in the repository (see recover_interrupted).

        Run before the server takes calls: POSIX locks belong to the process, so recovery
        cannot tell this process's own changes in progress from a dead server's debris.
        """
        await asyncio.to_thread(recover_interrupted, self.repository)

    async def load_all(self) -> None:
        """Load every model of the repository; a failure leaves that model UNAVAILABLE."""
        names = await asyncio.to_thread(self.repository.model_names)
        for name in names:
            try:
                async with self._lock(name):
                    await self.prepare(name, fall_back=True)
                    await self.commit(name)
            except ServerError as error:
                log.warning("model %s not loaded: %s", name, error)
                # A model that failed before any version was tried (its config, its
                # folders) still shows why in RepositoryIndex.
                if name not in self._records:
                    self._records[name] = ModelRecord(name, ModelState.UNAVAILABLE, str(error))

    async def load_versions(self, versions: Mapping[str, int]) -> None:
        """Load exactly these versions (a restarted worker joining the others); fails on any."""
        for name, version in versions.items():
            async with self._lock(name):
                await self.prepare(name, version=version)
                await self.commit(name)

    async def load(
        self,
        name: str,
        *,
        config_json: str | None = None,
        files: Mapping[str, bytes | StagedFile] | None = None,
    ) -> ServingModel:
        """Write the given config and files, then (re)load the model's newest version.

        The writes are undone when the load fails, so the folder keeps serving what it served.
        The load itself goes through `changes`: this process, or every worker.

        A caller that goes away (cancelled: a deadline, a closed connection) stops waiting, but
        the change runs to its commit or rollback: cancelled mid-write, a worker thread would go
        on writing while the rollback ran, and a loaded engine would never be closed.
        """
        change = asyncio.ensure_future(self._load(name, config_json, files))
        try:
            return await asyncio.shield(change)
        except asyncio.CancelledError:
            change.add_done_callback(_log_failure)  # nobody waits for its outcome now
            raise

    async def _load(
        self,
        name: str,
        config_json: str | None,
        files: Mapping[str, bytes | StagedFile] | None,
    ) -> ServingModel:
        async with self._lock(name):
            if config_json is not None:
                # Malformed JSON is refused before anything is written.
                parse_config_text(config_json, "json", name)
            change = RepositoryChange(self.repository, name)
            try:
                if config_json is not None:
                    await asyncio.to_thread(change.write_config_json, config_json)
                for relative_path, data in (files or {}).items():
                    await asyncio.to_thread(change.write_file, relative_path, data)
                await self.changes.load(name)
            except BaseException:
                # The folder goes back to what it was, so a restart serves the old version too.
                await asyncio.to_thread(change.rollback)
                raise
            await asyncio.to_thread(change.commit)
            return self.get(name)

    async def unload(self, name: str) -> None:
        """Stop serving a model; queued requests finish first. Files stay in the repository."""
        async with self._lock(name):
            record = self._records.get(name)
            if record is None or record.serving is None:
                raise NotFound(f"model '{name}' is not loaded")
            await self.changes.unload(name)

    async def unload_here(self, name: str) -> None:
        """Stop serving a model in this process (a no-op when it serves none)."""
        record = self._records.get(name)
        if record is None or record.serving is None:
            return
        serving = record.serving
        self._set_state(record, ModelState.UNLOADING, "", str(serving.version))
        await serving.close(drain=True)
        record.serving = None
        self._set_state(record, ModelState.UNAVAILABLE, UNLOADED, str(serving.version))
        self._metrics.drop_version(name, str(serving.version))

    def get(self, name: str, version: str = "") -> ServingModel:
        """The serving model for a request; NotFound or Unavailable with the reason."""
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model '{name}'; loaded models: {self._ready_names()}")
        if record.serving is None:
            raise Unavailable(
                f"model '{name}' is not ready (state {record.state.value}"
                + (f": {record.reason})" if record.reason else ")")
            )
        if version and version != str(record.serving.version):
            raise NotFound(
                f"model '{name}': version {version!r} is not served; "
                f"served version: {record.serving.version}"
            )
        return record.serving

    async def index(self) -> list[IndexEntry]:
        """Every model known here or present in the repository, with its state."""
        # The scan reads the repository folder: off the event loop, as load_all's.
        names = await asyncio.to_thread(self.repository.model_names)
        entries = {
            name: IndexEntry(
                name,
                str(r.serving.version) if r.serving else "",
                r.state.value,
                r.reason,
            )
            for name, r in self._records.items()
        }
        for name in names:
            entries.setdefault(
                name, IndexEntry(name, "", ModelState.UNAVAILABLE.value, "not loaded")
            )
        return [entries[n] for n in sorted(entries)]

    def unavailable(self) -> dict[str, str]:
        """Every model known here but not served, with why."""
        return {n: r.reason for n, r in self._records.items() if r.serving is None}

    def mark_unavailable(self, reasons: Mapping[str, str]) -> None:
        """Know these models as not served, with why (a worker joining the others)."""
        for name, reason in reasons.items():
            self._records.setdefault(name, ModelRecord(name, ModelState.UNAVAILABLE, reason))

    def serving_models(self) -> list[ServingModel]:
        """Every model version taking requests now."""
        return [r.serving for r in self._records.values() if r.serving is not None]

    async def close(self) -> None:
        """Drain and release every model."""
        for name in list(self._prepared):
            await self.abort(name, "the server is stopping")
        for record in list(self._records.values()):
            if record.serving is not None:
                await record.serving.close(drain=True)
                record.serving = None

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _ready_names(self) -> list[str]:
        return sorted(n for n, r in self._records.items() if r.serving is not None)

    async def prepare(
        self, name: str, *, version: int | None = None, fall_back: bool = False
    ) -> ServingModel:
        """Build a version beside the served one, for `commit` or `abort`.

        The newest version by default, the one the config's version_policy names, or exactly
        `version`; with `fall_back`, older versions are tried when the newest fails (used at
        start-up, so a broken upload never takes down a model that has a good older version).
        """
        if name in self._prepared:
            raise FailedPrecondition(f"model '{name}': another load of it is in progress")
        settings = await asyncio.to_thread(self.repository.read_settings, name)
        versions = await asyncio.to_thread(self.repository.versions, name)
        if not versions:
            raise NotFound(f"model '{name}' has no version folder in the repository")
        # An exact version asked for, else the one the config names: no other is ever served
        # in its place.
        exact = version if version is not None else settings.version_policy.version
        if exact is not None and exact not in versions:
            named = "" if version is not None else f"version_policy specific versions: [{exact}]: "
            raise NotFound(
                f"model '{name}': {named}version {exact} is not in the repository; "
                f"versions there: {sorted(versions)}"
            )
        record = self._records.setdefault(name, ModelRecord(name, ModelState.LOADING))
        if exact is not None:
            candidates = [exact]
        else:
            candidates = sorted(versions, reverse=True) if fall_back else [max(versions)]
        if record.serving is None:
            self._set_state(record, ModelState.LOADING, "", str(candidates[0]))
        error: ServerError | None = None
        for candidate in candidates:
            try:
                serving = await self._build(name, candidate, settings)
            except ServerError as e:
                log.warning("model %s version %d failed to load: %s", name, candidate, e)
                error = e
                continue
            self._prepared[name] = serving
            return serving
        assert error is not None
        self._failed(record, str(error), str(candidates[0]))
        raise error

    async def commit(self, name: str) -> ServingModel:
        """Serve the prepared version; the one it replaces drains, then closes."""
        serving = self._prepared.pop(name)
        record = self._records[name]
        previous = record.serving
        record.serving = serving
        self._set_state(record, ModelState.READY, "", str(serving.version))
        if previous is not None:
            await previous.close(drain=True)
            if previous.version != serving.version:  # the same version shares its metrics
                self._metrics.drop_version(name, str(previous.version))
        return serving

    async def abort(self, name: str, reason: str) -> None:
        """Close the prepared version unused (another worker failed to prepare it)."""
        serving = self._prepared.pop(name, None)
        if serving is None:
            return
        await serving.close(drain=True)
        record = self._records[name]
        served = record.serving.version if record.serving is not None else None
        if served != serving.version:  # the same version shares its metrics
            self._metrics.drop_version(name, str(serving.version))
        self._failed(record, reason, str(serving.version))

    def _failed(self, record: ModelRecord, reason: str, version: str) -> None:
        """Record a failed load: UNAVAILABLE, or the previous version still serving."""
        if record.serving is None:
            self._set_state(record, ModelState.UNAVAILABLE, reason, version)
        else:
            record.reason = (
                f"reload failed, version {record.serving.version} still serving: {reason}"
            )

    async def _build(self, name: str, version: int, settings: ModelSettings) -> ServingModel:
        backend = self._backends.get(settings.platform)
        if backend is None:
            raise FailedPrecondition(
                f"model '{name}': platform {settings.platform!r} is not supported; "
                f"expected one of {sorted(self._backends)}"
            )
        # Each backend checks that it can run here inside `load`, after it has looked at the
        # file, so a damaged file gets its precise message even where the backend cannot run.
        path = self.repository.model_path(name, version, settings)
        if not path.is_file():
            raise NotFound(f"model '{name}' version {version}: model file {path.name} is missing")
        loaded = await asyncio.to_thread(backend.load, path, settings)
        try:
            complete = complete_settings(settings, loaded.io)
            placements = _placements(complete)
            instances = await asyncio.to_thread(_create_instances, loaded, placements)
            try:
                if complete.warmups:
                    outputs = [t.name for t in loaded.io.outputs]
                    where = f"model '{name}' version {version}"
                    folder = self.repository.model_dir(name)
                    await asyncio.to_thread(
                        run_warmup, where, complete.warmups, instances, folder, outputs
                    )
            except BaseException:
                await asyncio.to_thread(_close_instances, instances)
                raise
        except BaseException:
            await asyncio.to_thread(loaded.close)
            raise
        # Creating the version's metrics also lists it in ModelStatistics before its first
        # request, as clients (perf_analyzer) expect.
        metrics = self._metrics.version(name, str(version))
        scheduler = ModelScheduler(
            self._scheduler_config(complete, version), instances, placements, metrics
        )
        scheduler.start()
        return ServingModel(
            name, version, complete, loaded.io, loaded, instances, scheduler, metrics
        )

    def _scheduler_config(self, settings: ModelSettings, version: int) -> SchedulerConfig:
        return SchedulerConfig(
            model=settings.name,
            version=str(version),
            max_batch_size=settings.max_batch_size,
            batching=settings.batching,
            max_queue_size=settings.batching.max_queue_size or self._default_max_queue_size,
            max_inline_execution_us=self._max_inline_execution_us,
        )

    def _set_state(self, record: ModelRecord, state: ModelState, reason: str, version: str) -> None:
        record.state = state
        record.reason = reason
        self._metrics.set_state(record.name, version, state)
        if self.on_state_change is not None:
            self.on_state_change(record.name, state)
        log.info(
            "model state changed",
            extra={
                "model": record.name,
                "version": version,
                "state": state.value,
                "reason": reason,
            },
        )


def _log_failure(change: asyncio.Future[ServingModel]) -> None:
    """Log how a change that its caller stopped waiting for ended."""
    if change.cancelled():
        return
    error = change.exception()
    if error is not None:
        log.warning("a model change whose caller went away failed: %s", error, exc_info=error)


def _close_instances(instances: Sequence[ModelInstance]) -> None:
    for instance in instances:
        instance.close()


def _create_instances(loaded: LoadedModel, placements: Sequence[Placement]) -> list[ModelInstance]:
    instances: list[ModelInstance] = []
    try:
        for placement in placements:
            instances.append(loaded.create_instance(placement))
    except BaseException:
        for instance in instances:
            instance.close()
        raise
    return instances


def _placements(settings: ModelSettings) -> list[Placement]:
    placements: list[Placement] = []
    for group in settings.instance_groups:
        devices = group.device_ids or (0,)
        if group.kind == DeviceKind.CPU:
            devices = (0,)
        for device_id in devices:
            for _ in range(group.count):
                placements.append(Placement(group.kind, device_id, len(placements)))
    return placements
