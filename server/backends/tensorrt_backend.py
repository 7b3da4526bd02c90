"""TensorRT version-compatible plans on NVIDIA GPUs: the backend that loads them.

Loading reads the plan header and refuses, before TensorRT, a plan that cannot run here
(plan_compatibility: not version-compatible, a plugin it does not carry, built for another
GPU); routes the plan to the lean runtime of exactly its version (or, for a trusted plan with
an embedded lean runtime, to the dispatch runtime), probes it in a child process, and
deserializes it into a `TensorRTModel` (tensorrt_model). When TensorRT refuses it, the message
says what was tried and the likely causes. Each instance
(tensorrt_instance) has its own execution context, CUDA stream, device buffers sized for the
largest shapes of the engine's optimization profiles, and pinned host staging buffers
(tensorrt_memory).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from trtserve.server.backends.base import Backend, LoadedModel
from trtserve.server.backends.tensorrt_model import (
    DeserializationFailed,
    TensorRTModel,
    prefixed,
)
from trtserve.server.backends.tensorrt_probe import probe_plan
from trtserve.server.errors import FailedPrecondition, ServerError, Unavailable
from trtserve.server.runtime.cuda_device import (
    DeviceDescription,
    cuda_device_count,
    describe_device,
    require_device,
)
from trtserve.server.runtime.lean_cache import (
    DISPATCH_MODULE,
    LeanCache,
    LeanRuntimeLease,
    process_lean_cache,
)
from trtserve.server.runtime.lean_store import LeanStore, install_command
from trtserve.server.runtime.plan_compatibility import assess, explain_failure
from trtserve.server.runtime.plan_header import (
    PlanHeader,
    PlanHeaderError,
    TrtVersion,
    engine_section,
    read_plan_header,
)
from trtserve.server.runtime.routing import Route, RouteKind, route_plan
from trtserve.server.runtime.trust import TrustDecision, TrustPolicy, read_signature_file
from trtserve.server.specs import DeviceKind, ModelSettings

PLATFORM = "tensorrt_plan"


class TensorRTBackend(Backend):
    """Loads `tensorrt_plan` models through the process's dispatch and lean runtimes."""

    platform = PLATFORM
    default_filename = "model.plan"

    def __init__(
        self,
        store: LeanStore | None = None,
        trust: TrustPolicy | None = None,
        runtimes: LeanCache | None = None,
        *,
        auto_install: bool = False,
        cuda_major: int = 13,
        probe_plans: bool = True,
        blocking_wait: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`auto_install` installs a missing lean runtime version on first need (pip);
        `probe_plans` deserializes each plan in a child process first (see tensorrt_probe);
        `blocking_wait` makes instances sleep, not spin, while the GPU works; the lean
        runtimes' metrics are registered on `registry` when given."""
        self.store = store if store is not None else LeanStore()
        self.trust = trust if trust is not None else TrustPolicy()
        self._runtimes = runtimes
        self.auto_install = auto_install
        self.cuda_major = cuda_major
        self.probe_plans = probe_plans
        self.blocking_wait = blocking_wait
        self._preloaded: list[LeanRuntimeLease] = []
        if registry is not None:
            registry.register(self.runtimes.metrics)

    @property
    def runtimes(self) -> LeanCache:
        if self._runtimes is None:
            self._runtimes = process_lean_cache()
        return self._runtimes

    def available(self) -> tuple[bool, str]:
        if cuda_device_count() <= 0:
            return False, (
                "no CUDA device is visible (no GPU, NVIDIA driver or cuda-bindings package), "
                "so TensorRT plans cannot be served here"
            )
        if importlib.util.find_spec(DISPATCH_MODULE) is None:
            return False, (
                f"the {DISPATCH_MODULE} package is not installed (pip install 'trtserve[tensorrt]')"
            )
        return True, ""

    def preload(self, versions: Sequence[str]) -> list[str]:
        """Load lean runtimes before any plan needs them and hold them until `close`.

        A warm cache makes the first model load of each version fast; the versions must be
        installed in the store.
        """
        ok, why = self.available()
        if not ok:
            raise Unavailable(f"cannot preload TensorRT lean runtimes: {why}")
        loaded: list[str] = []
        for text in versions:
            version = TrtVersion.parse(text)
            library = self.store.path_for(version)
            if library is None:
                raise Unavailable(
                    f"preload_runtimes: lean runtime {version} is not installed in "
                    f"{self.store.root}; run `{install_command(version)}`"
                )
            self._preloaded.append(self.runtimes.acquire(version, library))
            loaded.append(str(version))
        return loaded

    def close(self) -> None:
        """Release the preloaded lean runtimes (after every model is closed)."""
        leases, self._preloaded = self._preloaded, []
        for lease in leases:
            lease.release()

    def load(self, path: Path, settings: ModelSettings) -> LoadedModel:
        name = settings.name
        # The header is read first: a damaged plan gets its precise message even on a machine
        # without a GPU, and so does a plan that cannot run anywhere here.
        plan = _read_plan(path, name)
        header = _read_header(plan, path, name)
        compatibility = assess(header, engine_section(plan, header))
        _refuse(compatibility.refusal(), path, name)
        ok, why = self.available()
        if not ok:
            raise Unavailable(f"model '{name}': {why}")
        # A plan this GPU cannot run is told so before any runtime is looked for.
        devices = [_described(device, name) for device in _gpus(settings)]
        for device in devices:
            _refuse(compatibility.refusal_on(device), path, name)
        route = self._route(header, plan, path, name)
        first = devices[0]
        try:
            return self._deserialize(name, path, plan, route, first.device_id)
        except DeserializationFailed as e:
            tried = (
                f"{route.describe()} on {first.describe()}, host code "
                f"{'allowed' if route.host_code else 'not allowed'}"
            )
            explained = explain_failure(compatibility, tried, first, e.tensorrt_said)
            raise FailedPrecondition(f"model '{name}': {path}: {explained}") from None

    def _deserialize(
        self, name: str, path: Path, plan: bytes, route: Route, device: int
    ) -> TensorRTModel:
        """Probe the plan in a child process, then load it here (see tensorrt_probe)."""
        if self.probe_plans:
            try:
                probe_plan(path, route.library, device, host_code=route.host_code)
            except ServerError as e:
                raise prefixed(e, name) from None
        lease = None
        try:
            if route.kind is RouteKind.LEAN:
                assert route.library is not None
                lease = self.runtimes.acquire(route.version, route.library)
            return TensorRTModel(
                name,
                path,
                plan,
                route,
                lease,
                self.runtimes,
                device,
                blocking_wait=self.blocking_wait,
            )
        except BaseException as e:
            if lease is not None:
                lease.release()
            if isinstance(e, ServerError):
                raise prefixed(e, name) from None
            raise

    def _route(self, header: PlanHeader, plan: bytes, path: Path, name: str) -> Route:
        decision: TrustDecision | None = None
        if header.has_host_code:
            decision = self.trust.check(plan, read_signature_file(path))
        try:
            return route_plan(header, self.store, decision)
        except Unavailable as e:
            if not self.auto_install or header.has_lean_runtime:
                raise prefixed(e, name) from None
        except ServerError as e:
            raise prefixed(e, name) from None
        try:
            self.store.install(header.version, self.cuda_major, progress=False)
            return route_plan(header, self.store, decision)
        except ServerError as e:
            raise prefixed(e, name) from None


def _gpus(settings: ModelSettings) -> list[int]:
    """Every GPU the model's instances use, the first one first (0 when none is named)."""
    devices: list[int] = []
    for group in settings.instance_groups:
        if group.kind is DeviceKind.GPU:
            devices += [d for d in group.device_ids if d not in devices]
    return devices or [0]


def _described(device: int, name: str) -> DeviceDescription:
    try:
        require_device(device)
        return describe_device(device)
    except ServerError as e:
        raise prefixed(e, name) from None


def _refuse(refusal: str | None, path: Path, name: str) -> None:
    if refusal is not None:
        raise FailedPrecondition(f"model '{name}': {path}: {refusal}")


def _read_plan(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FailedPrecondition(f"model '{name}': cannot read {path}: {e.strerror or e}") from e


def _read_header(plan: bytes, path: Path, name: str) -> PlanHeader:
    try:
        return read_plan_header(plan)
    except PlanHeaderError as e:
        raise FailedPrecondition(f"model '{name}': {path}: {e}") from None
