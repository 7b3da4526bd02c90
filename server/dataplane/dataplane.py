"""The protocol-neutral server: what every transport (gRPC today, REST later) calls.

A transport parses its wire format, calls one method here and encodes the result; everything
that is the same whatever the protocol lives here: readiness and draining, model lookup,
limits on repository changes, statistics, shared-memory regions, and the inference path
(tracking for drain, metrics, leasing the regions a request references, decoding big
requests off the event loop, handing memory back after them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from trtserve.protocol import datatypes
from trtserve.server.dataplane.cuda_region import CudaRegionStatus
from trtserve.server.dataplane.heap_release import HeapRelease
from trtserve.server.dataplane.serving_state import ServingState
from trtserve.server.dataplane.shared_memory import (
    Lease,
    RegionChanges,
    RegionKind,
    SharedMemoryRegistry,
)
from trtserve.server.dataplane.system_region import SystemRegionStatus
from trtserve.server.dataplane.tensor_references import TensorReference, place_outputs
from trtserve.server.errors import ServerError, Unavailable, outcome
from trtserve.server.limits import RequestLimits, check_upload_size
from trtserve.server.metrics import ServerMetrics, VersionStats
from trtserve.server.model_state import ModelState
from trtserve.server.models.manager import IndexEntry, ModelManager
from trtserve.server.models.serving_model import ServingModel
from trtserve.server.repository.repository import ModelRepository, check_model_name
from trtserve.server.repository.staging import StagedFile
from trtserve.server.runtime.cuda_copies import device_to_host
from trtserve.server.runtime.tensor_buffers import DeviceArray, PlacedOutput
from trtserve.server.scheduler.request import InferenceRequest, InferenceResponse

SERVER_NAME = "trtserve"
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "system_shared_memory",
)
# Listed only where a GPU exists: without one, CUDA registrations are refused.
CUDA_EXTENSION = "cuda_shared_memory"
# Decoding or encoding more elements one by one than this (a few ms) runs off the event loop.
OFF_LOOP_ELEMENTS = 1 << 14

Reply = TypeVar("Reply")


class PreparedRequest(Protocol):
    """A request whose headers a transport has checked against the model; not decoded yet."""

    @property
    def per_element(self) -> int:
        """How many elements decoding builds one object for (BYTES, typed contents)."""

    @property
    def regions(self) -> dict[str, str]:
        """The shared-memory regions the request references, each with a tensor naming it."""

    @property
    def inline_bytes(self) -> int:
        """Bytes of input data carried in the request itself."""

    @property
    def input_references(self) -> tuple[TensorReference, ...]:
        """The inputs passed by reference."""

    def decode(self, lease: Lease | None) -> InferenceRequest:
        """The request's tensors (zero-copy where the wire allows), references resolved
        through `lease`."""


# A transport's hook to run a function once its call is over (gRPC frees messages only then).
WhenDone = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class ServerInfo:
    """What ServerMetadata reports."""

    name: str
    version: str
    extensions: tuple[str, ...]
    # The answering worker's index under `serve --workers N` (None: a single process).
    worker: int | None = None


class DataPlane:
    """The server's operations, independent of how requests arrive."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServerMetrics,
        state: ServingState,
        version: str,
        limits: RequestLimits,
        shared_memory: SharedMemoryRegistry,
        gpus: int,
        region_changes: RegionChanges | None = None,
        worker: int | None = None,
    ) -> None:
        """`gpus`: how many CUDA devices this process sees (CUDA shared memory needs one);
        `region_changes`: where registrations go (default: this process's registry);
        `worker`: this process's index among the server's workers, if it has several."""
        self.state = state
        self.limits = limits
        self.shared_memory = shared_memory
        self._region_changes = region_changes or shared_memory
        self._manager = manager
        self._metrics = metrics
        extensions = EXTENSIONS + ((CUDA_EXTENSION,) if gpus > 0 else ())
        self._info = ServerInfo(SERVER_NAME, version, extensions, worker)
        self._heap_release = HeapRelease()

    # --- server ------------------------------------------------------------------------------

    def live(self) -> bool:
        """Whether the process answers (always, while it can answer at all)."""
        return True

    def ready(self) -> bool:
        """Whether the server takes inference requests."""
        return self.state.ready and not self.state.draining

    def info(self) -> ServerInfo:
        """Name, version and protocol extensions."""
        return self._info

    # --- models ------------------------------------------------------------------------------

    def model(self, name: str, version: str = "") -> ServingModel:
        """The serving model; NotFound or Unavailable naming why not."""
        return self._manager.get(name, version)

    def versions(self, name: str) -> list[int]:
        """The versions of a model taking requests, oldest first."""
        return self._manager.versions(name)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version) takes requests now."""
        try:
            self._manager.get(name, version)
        except ServerError:
            return False
        return not self.state.draining

    def statistics(self, name: str, version: str) -> list[tuple[str, str, VersionStats]]:
        """Statistics of every served version matching `name` and `version` (empty: all)."""
        if name:
            self._manager.get(name, version)
        # Only the versions served now: a dropped version's counters may stay in the metrics
        # (multiprocess mode's files keep them).
        serving = {(m.name, str(m.version)) for m in self._manager.serving_models()}
        stats = self._metrics.statistics()
        return [
            (model, ver, stats.get((model, ver), VersionStats()))
            for model, ver in sorted(serving)
            if (not name or model == name) and (not version or ver == version)
        ]

    async def index(self, ready_only: bool) -> list[IndexEntry]:
        """Every model known here or in the repository, with its state."""
        entries = await self._manager.index()
        return [e for e in entries if not ready_only or e.state == ModelState.READY]

    # --- repository control ------------------------------------------------------------------

    @property
    def repository(self) -> ModelRepository:
        """The model repository (uploads stage their files in it)."""
        return self._manager.repository

    async def load(
        self,
        name: str,
        config_json: str | None = None,
        files: Mapping[str, bytes | StagedFile] | None = None,
    ) -> None:
        """(Re)load a model, first writing the given config and files."""
        check_model_name(name)
        slot: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        inline = {path: data for path, data in (files or {}).items() if isinstance(data, bytes)}
        if inline:
            # Files sent with a load are an upload: they count against the same limits.
            check_upload_size(
                f"model '{name}' file overrides",
                sum(len(data) for data in inline.values()),
                self.limits.max_upload_bytes,
            )
            slot = self.limits.uploads.slot()
        with slot:
            await self._manager.load(name, config_json=config_json, files=files)

    async def unload(self, name: str) -> None:
        """Stop serving a model; its files stay in the repository."""
        await self._manager.unload(name)

    # --- shared memory -----------------------------------------------------------------------

    async def register_system_region(
        self, name: str, key: str, offset: int, byte_size: int
    ) -> None:
        """Register a byte range of the shared-memory object `key` as region `name`."""
        await self._region_changes.register_system(name, key, offset, byte_size)

    async def register_cuda_region(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Register GPU memory exported with CUDA IPC as region `name`."""
        await self._region_changes.register_cuda(name, raw_handle, device_id, byte_size)

    async def unregister_region(self, kind: RegionKind, name: str) -> None:
        """Unregister one region of `kind`, or every one when `name` is empty."""
        await self._region_changes.unregister(kind, name)

    def system_regions(self, name: str) -> list[SystemRegionStatus]:
        """The registered system regions (only `name` when given)."""
        return [
            s
            for s in self.shared_memory.status(RegionKind.SYSTEM, name)
            if isinstance(s, SystemRegionStatus)
        ]

    def cuda_regions(self, name: str) -> list[CudaRegionStatus]:
        """The registered CUDA regions (only `name` when given)."""
        return [
            s
            for s in self.shared_memory.status(RegionKind.CUDA, name)
            if isinstance(s, CudaRegionStatus)
        ]

    # --- inference ---------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str,
        prepare: Callable[[ServingModel], PreparedRequest],
        encode: Callable[[ServingModel, InferenceResponse], Reply],
        when_done: WhenDone | None = None,
    ) -> Reply:
        """Run one request: `prepare` checks it against the model, `encode` builds the reply.

        `when_done`, if given, runs a function once the transport's call is over.
        """
        with self.state.track():
            return await self._infer(name, version, prepare, encode, when_done)

    async def _infer(
        self,
        name: str,
        version: str,
        prepare: Callable[[ServingModel], PreparedRequest],
        encode: Callable[[ServingModel, InferenceResponse], Reply],
        when_done: WhenDone | None,
    ) -> Reply:
        started = time.perf_counter_ns()
        if self.state.draining:
            raise Unavailable("server is shutting down; retry on another replica")
        # Metrics are labelled only with models and versions that exist, so clients cannot
        # grow them (or ModelStatistics) by naming made-up ones.
        model = self._manager.get(name, version)
        queue_ns: int | None = None
        batch_size = 1
        # Stays "cancelled" when the client goes away and the task is cancelled mid-request.
        result = "cancelled"
        # Whether decoding or encoding built objects per element (see HeapRelease).
        many = False
        lease: Lease | None = None
        try:
            prepared = prepare(model)
            if prepared.regions:
                lease = self.shared_memory.lease(prepared.regions)
            # Small raw requests decode inline (zero-copy, microseconds); a large BYTES or
            # typed request would hold the loop for seconds, so a worker thread decodes it.
            if prepared.per_element > OFF_LOOP_ELEMENTS:
                many = True
                inputs = await asyncio.to_thread(prepared.decode, lease)
            else:
                inputs = prepared.decode(lease)
            # Only a region can hold GPU memory: requests without one skip the look.
            if lease is not None and not model.loaded.device_tensors and _on_gpu(inputs):
                await asyncio.to_thread(_inputs_to_host, inputs)
            batch_size = inputs.batch_size
            self._count_inputs(prepared, lease)
            if lease is not None:
                # The scheduler may still run the request after its caller left: it holds
                # the regions until the backend is done with them.
                inputs.on_release = lease.share()
            response = await model.scheduler.submit(inputs)
            queue_ns = response.queue_ns
            if inputs.output_targets and _unplaced(inputs, response):
                await self._place(model, inputs, response)
            if many_objects(response):
                many = True
                reply = await asyncio.to_thread(encode, model, response)
            else:
                reply = encode(model, response)
            self._count_outputs(inputs, response)
            result = "success"
            return reply
        except Exception as e:
            result = outcome(e)
            raise
        finally:
            if lease is not None:
                lease.release()
            model.metrics.record_request(
                result, time.perf_counter_ns() - started, queue_ns, batch_size
            )
            if many:
                self._release_after(when_done)

    async def _place(
        self, model: ServingModel, request: InferenceRequest, response: InferenceResponse
    ) -> None:
        """Write outputs still in the response (BYTES: the scheduler places the others) into
        the shared memory the client named."""
        types = {spec.name: datatypes.from_name(spec.datatype) for spec in model.outputs.values()}
        targets = request.output_targets
        if any(t.device is not None for t in targets.values()):
            await asyncio.to_thread(place_outputs, response.outputs, targets, types)
        else:
            place_outputs(response.outputs, targets, types)

    def _count_inputs(self, prepared: PreparedRequest, lease: Lease | None) -> None:
        """Input bytes by path: in the message, or by reference to either kind of region."""
        counted = {"inline": prepared.inline_bytes}
        if lease is not None:
            for reference in prepared.input_references:
                path = _path(lease.kind(reference.region))
                counted[path] = counted.get(path, 0) + reference.byte_size
        self._metrics.count_tensor_bytes("input", counted)

    def _count_outputs(self, request: InferenceRequest, response: InferenceResponse) -> None:
        """Output bytes by path: in the reply, or written into either kind of region."""
        if not request.output_targets:  # all inline: no target to look up per output
            inline = sum(int(array.nbytes) for array in response.outputs.values())
            self._metrics.count_tensor_bytes("output", {"inline": inline})
            return
        counted: dict[str, int] = {}
        for name, array in response.outputs.items():
            target = request.output_targets.get(name)
            if isinstance(array, PlacedOutput) and target is not None:
                kind = RegionKind.CUDA if target.device is not None else RegionKind.SYSTEM
                path, nbytes = _path(kind), array.nbytes
            else:
                path, nbytes = "inline", int(array.nbytes)
            counted[path] = counted.get(path, 0) + nbytes
        self._metrics.count_tensor_bytes("output", counted)

    def _release_after(self, when_done: WhenDone | None) -> None:
        """Release freed memory once the call is over (its messages are freed only then)."""
        if when_done is None:
            self._heap_release.after_request()
        else:
            when_done(self._heap_release.after_request)


def many_objects(response: InferenceResponse) -> bool:
    """Whether encoding the response builds more than OFF_LOOP_ELEMENTS objects (BYTES)."""
    # Loops, not any() over generators, here and below: they run for every request.
    for array in response.outputs.values():
        if (
            isinstance(array, np.ndarray)
            and array.dtype.kind == "O"
            and array.size > OFF_LOOP_ELEMENTS
        ):
            return True
    return False


def _on_gpu(request: InferenceRequest) -> bool:
    for array in request.inputs.values():  # noqa: SIM110 (see many_objects)
        if isinstance(array, DeviceArray):
            return True
    return False


def _inputs_to_host(request: InferenceRequest) -> None:
    """Copy GPU inputs to the host, for backends that take host arrays only."""
    for name, array in list(request.inputs.items()):
        if isinstance(array, DeviceArray):
            request.inputs[name] = device_to_host(array)


def _unplaced(request: InferenceRequest, response: InferenceResponse) -> bool:
    """Whether an output the client wants in shared memory is still in the response."""
    return any(
        not isinstance(response.outputs.get(name), PlacedOutput | None)
        for name in request.output_targets
    )


def _path(kind: RegionKind) -> str:
    """A region kind as the tensor-bytes metric labels it."""
    return f"{kind.value}_shared_memory"
