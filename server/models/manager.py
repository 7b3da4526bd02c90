"""Loads, reloads and unloads models, and tracks the state of each.

A model serves the versions its config's version_policy names (the newest by default). A
reload builds the new versions completely (backend load, instances, scheduler) before they
replace the served ones, so a model that fails to load leaves the previous versions serving.
The two steps are separate calls, `prepare` and `commit` (or `abort`), so that several worker
processes can each prepare a version and then all commit it or all abort it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from trtserve.server.backends.base import Backend, LoadedModel, ModelInstance, Placement
from trtserve.server.errors import (
    FailedPrecondition,
    NotFound,
    ServerError,
    Unavailable,
    reworded,
)
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
from trtserve.server.specs import DeviceKind, ModelSettings, PolicyKind

log = logging.getLogger(__name__)

# The reason of a model a client unloaded.
UNLOADED = "unloaded"


@dataclass
class ModelRecord:
    """What the manager knows of one model name."""

    name: str
    state: ModelState
    reason: str = ""
    # The versions taking requests, by number.
    served: dict[int, ServingModel] = field(default_factory=dict)
    # Versions the policy names that failed to load at start-up while others serve, with why.
    failed: dict[int, str] = field(default_factory=dict)

    def newest(self) -> ServingModel | None:
        """The version a request that names none goes to (Triton: the highest served)."""
        return self.served[max(self.served)] if self.served else None


@dataclass
class PreparedLoad:
    """Versions built by `prepare`, waiting for `commit` or `abort`."""

    versions: dict[int, ServingModel]
    failed: dict[int, str]


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
        self._prepared: dict[str, PreparedLoad] = {}
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

    async def load_versions(self, versions: Mapping[str, Sequence[int]]) -> None:
        """Load exactly these versions (a restarted worker joining the others); fails on any."""
        for name, numbers in versions.items():
            async with self._lock(name):
                await self.prepare(name, versions=numbers)
                await self.commit(name)

    async def load(
        self,
        name: str,
        *,
        config_json: str | None = None,
        files: Mapping[str, bytes | StagedFile] | None = None,
    ) -> ServingModel:
        """Write the given config and files, then (re)load the versions its policy names.

        Returns the newest version served.

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
            if record is None or not record.served:
                raise NotFound(f"model '{name}' is not loaded")
            await self.changes.unload(name)

    async def unload_here(self, name: str) -> None:
        """Stop serving a model in this process (a no-op when it serves none)."""
        record = self._records.get(name)
        if record is None or not record.served:
            return
        versions = sorted(record.served)
        self._set_state(record, ModelState.UNLOADING, "", versions)
        for serving in record.served.values():
            await serving.close(drain=True)
        record.served = {}
        record.failed = {}
        self._set_state(record, ModelState.UNAVAILABLE, UNLOADED, versions)
        for version in versions:
            self._metrics.drop_version(name, str(version))

    def get(self, name: str, version: str = "") -> ServingModel:
        """The version a request names (none: the newest served); NotFound or Unavailable
        with the reason."""
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model '{name}'; loaded models: {self._ready_names()}")
        newest = record.newest()
        if newest is None:
            raise Unavailable(
                f"model '{name}' is not ready (state {record.state.value}"
                + (f": {record.reason})" if record.reason else ")")
            )
        if not version:
            return newest
        for number, serving in record.served.items():
            if str(number) == version:
                return serving
        served = sorted(record.served)
        # str.isdigit accepts digits int() refuses ("²"): compare as text instead.
        failed = next((r for v, r in record.failed.items() if str(v) == version), None)
        raise NotFound(
            f"model '{name}': version {version!r} is not served"
            + (f" (it failed to load: {failed})" if failed else "")
            + f"; served versions: {served}"
        )

    def versions(self, name: str) -> list[int]:
        """The versions of a model taking requests, oldest first."""
        record = self._records.get(name)
        return sorted(record.served) if record is not None else []

    async def index(self) -> list[IndexEntry]:
        """Every model known here or present in the repository, with its state."""
        # The scan reads the repository folder: off the event loop, as load_all's.
        names = await asyncio.to_thread(self.repository.model_names)
        entries = {name: _index_entries(record) for name, record in self._records.items()}
        for name in names:
            entries.setdefault(
                name, [IndexEntry(name, "", ModelState.UNAVAILABLE.value, "not loaded")]
            )
        return [entry for name in sorted(entries) for entry in entries[name]]

    def unavailable(self) -> dict[str, str]:
        """Every model known here but not served, with why."""
        return {n: r.reason for n, r in self._records.items() if not r.served}

    def mark_unavailable(self, reasons: Mapping[str, str]) -> None:
        """Know these models as not served, with why (a worker joining the others)."""
        for name, reason in reasons.items():
            self._records.setdefault(name, ModelRecord(name, ModelState.UNAVAILABLE, reason))

    def serving_models(self) -> list[ServingModel]:
        """Every model version taking requests now."""
        return [s for r in self._records.values() for s in r.served.values()]

    async def close(self) -> None:
        """Drain and release every model."""
        for name in list(self._prepared):
            await self.abort(name, "the server is stopping")
        for record in list(self._records.values()):
            for serving in record.served.values():
                await serving.close(drain=True)
            record.served = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _ready_names(self) -> list[str]:
        return sorted(n for n, r in self._records.items() if r.served)

    async def prepare(
        self, name: str, *, versions: Sequence[int] | None = None, fall_back: bool = False
    ) -> list[ServingModel]:
        """Build the versions to serve beside the served ones, for `commit` or `abort`.

        The versions the config's version_policy names, or exactly `versions`; every one must
        load. With `fall_back` (start-up), a model serves what loads: the newest versions that
        load for `latest`, those of the others that load; a broken upload never takes down a
        model that has a good version. Returns the built versions, newest first.
        """
        if name in self._prepared:
            raise FailedPrecondition(f"model '{name}': another load of it is in progress")
        settings = await asyncio.to_thread(self.repository.read_settings, name)
        available = await asyncio.to_thread(self.repository.versions, name)
        if not available:
            raise NotFound(f"model '{name}' has no version folder in the repository")
        policy = settings.version_policy
        wanted = sorted(set(versions), reverse=True) if versions else policy.choose(available)
        _check_present(name, wanted, available, named=not versions)
        record = self._records.setdefault(name, ModelRecord(name, ModelState.LOADING))
        if not record.served:
            self._set_state(record, ModelState.LOADING, "", wanted)
        # `latest` falls back to older versions in place of those that fail to load.
        tried = wanted
        if fall_back and not versions and policy.kind is PolicyKind.LATEST:
            tried = sorted(available, reverse=True)
        try:
            prepared = await self._build_all(name, settings, tried, len(wanted), fall_back)
        except ServerError as error:
            self._failed(record, str(error), wanted)
            raise
        self._prepared[name] = prepared
        return [prepared.versions[v] for v in sorted(prepared.versions, reverse=True)]

    async def _build_all(
        self,
        name: str,
        settings: ModelSettings,
        tried: Sequence[int],
        wanted: int,
        fall_back: bool,
    ) -> PreparedLoad:
        """Build versions in the order of `tried` until `wanted` have loaded.

        Without `fall_back` the first failure closes what was built and is raised.
        """
        prepared = PreparedLoad({}, {})
        error: ServerError | None = None
        for version in tried:
            if len(prepared.versions) == wanted:
                break
            try:
                prepared.versions[version] = await self._build(name, version, settings)
            except ServerError as e:
                error = _naming_version(e, name, version)
                log.warning("%s", error)
                prepared.failed[version] = str(error)
                if not fall_back:
                    await self._discard(name, prepared)
                    raise error from None
        if not prepared.versions:
            assert error is not None
            raise error
        return prepared

    async def _discard(self, name: str, prepared: PreparedLoad) -> None:
        """Close built versions that will not serve; drop the metrics of those not served."""
        record = self._records.get(name)
        served = record.served if record is not None else {}
        for version, serving in prepared.versions.items():
            await serving.close(drain=True)
            if version not in served:  # a served version shares these metrics
                self._metrics.drop_version(name, str(version))

    async def commit(self, name: str) -> ServingModel:
        """Serve the prepared versions; those they replace drain, then close.

        Returns the newest version now served.
        """
        prepared = self._prepared.pop(name)
        record = self._records[name]
        previous = record.served
        record.served = dict(sorted(prepared.versions.items()))
        record.failed = prepared.failed
        self._set_state(record, ModelState.READY, "", sorted(record.served))
        for version, serving in previous.items():
            await serving.close(drain=True)
            if version not in record.served:  # the same version shares its metrics
                self._metrics.drop_version(name, str(version))
        newest = record.newest()
        assert newest is not None
        return newest

    async def abort(self, name: str, reason: str) -> None:
        """Close the prepared versions unused (another worker failed to prepare them)."""
        prepared = self._prepared.pop(name, None)
        if prepared is None:
            return
        await self._discard(name, prepared)
        self._failed(self._records[name], reason, sorted(prepared.versions))

    def _failed(self, record: ModelRecord, reason: str, versions: Sequence[int]) -> None:
        """Record a failed load: UNAVAILABLE, or the previous versions still serving."""
        if not record.served:
            self._set_state(record, ModelState.UNAVAILABLE, reason, versions)
        else:
            served = sorted(record.served)
            which = f"version {served[0]}" if len(served) == 1 else f"versions {served}"
            record.reason = f"reload failed, {which} still serving: {reason}"

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

    def _set_state(
        self, record: ModelRecord, state: ModelState, reason: str, versions: Sequence[int]
    ) -> None:
        record.state = state
        record.reason = reason
        self._metrics.set_state(record.name, [str(v) for v in versions], state)
        if self.on_state_change is not None:
            self.on_state_change(record.name, state)
        log.info(
            "model state changed",
            extra={
                "model": record.name,
                "version": ",".join(str(v) for v in versions),
                "state": state.value,
                "reason": reason,
            },
        )


def _check_present(name: str, wanted: Sequence[int], available: Sequence[int], named: bool) -> None:
    """NotFound naming the versions asked for that the repository lacks, and those it has."""
    missing = sorted(v for v in wanted if v not in available)
    if not missing:
        return
    where = "version_policy specific versions: " if named else ""
    which = f"version {missing[0]} is" if len(missing) == 1 else f"versions {missing} are"
    raise NotFound(
        f"model '{name}': {where}{which} not in the repository; versions there: {sorted(available)}"
    )


def _naming_version(error: ServerError, name: str, version: int) -> ServerError:
    """`error` saying which version failed: "model 'm' version 2: ..."."""
    text = str(error)
    named = f"model '{name}' version {version}"
    if text.startswith(named):
        return error
    text = text.removeprefix(f"model '{name}': ")
    return reworded(error, f"{named}: {text}")


def _index_entries(record: ModelRecord) -> list[IndexEntry]:
    """A model's lines of the index: one per served or failed version, or one for the model."""
    lines = {v: IndexEntry(record.name, str(v), record.state.value, "") for v in record.served}
    for version, reason in record.failed.items():
        lines[version] = IndexEntry(record.name, str(version), ModelState.UNAVAILABLE.value, reason)
    if not lines:
        return [IndexEntry(record.name, "", record.state.value, record.reason)]
    if record.reason:  # a failed reload: said on the served versions' lines
        for version in record.served:
            lines[version] = dataclasses.replace(lines[version], reason=record.reason)
    return [lines[v] for v in sorted(lines)]


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
