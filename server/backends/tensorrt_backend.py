"""TensorRT version-compatible plans on NVIDIA GPUs: the backend that loads them.

Loading reads the plan header, routes the plan to the lean runtime of exactly its version (or,
for a trusted plan with an embedded lean runtime, to the dispatch runtime), probes it in a
child process, and deserializes it into a `TensorRTModel` (tensorrt_model). Each instance
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
from trtserve.server.backends.tensorrt_model import TensorRTModel, prefixed
from trtserve.server.backends.tensorrt_probe import probe_plan
from trtserve.server.errors import FailedPrecondition, ServerError, Unavailable
from trtserve.server.runtime.cuda_device import cuda_device_count, require_device
from trtserve.server.runtime.lean_cache import (
    DISPATCH_MODULE,
    LeanCache,
    LeanRuntimeLease,
    process_lean_cache,
)
from trtserve.server.runtime.lean_store import LeanStore, install_command
from trtserve.server.runtime.plan_header import (
    PlanHeader,
    PlanHeaderError,
    TrtVersion,
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
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`auto_install` installs a missing lean runtime version on first need (pip);
        `probe_plans` deserializes each plan in a child process first (see tensorrt_probe);
        the lean runtimes' metrics are registered on `registry` when given."""
        self.store = store if store is not None else LeanStore()
        self.trust = trust if trust is not None else TrustPolicy()
        self._runtimes = runtimes
        self.auto_install = auto_install
        self.cuda_major = cuda_major
        self.probe_plans = probe_plans
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
        # without a GPU.
        plan = _read_plan(path, name)
        header = _read_header(plan, path, name)
        ok, why = self.available()
        if not ok:
            raise Unavailable(f"model '{name}': {why}")
        route = self._route(header, plan, path, name)
        device = _first_gpu(settings)
        require_device(device)
        if self.probe_plans:
            try:
                probe_plan(path, route.library, device)
            except ServerError as e:
                raise prefixed(e, name) from None
        lease = None
        try:
            if route.kind is RouteKind.LEAN:
                assert route.library is not None
                lease = self.runtimes.acquire(route.version, route.library)
            return TensorRTModel(name, path, plan, route, lease, self.runtimes, device)
        except ServerError as e:
            if lease is not None:
                lease.release()
            raise prefixed(e, name) from None
        except BaseException:
            if lease is not None:
                lease.release()
            raise

    def _route(self, header: PlanHeader, plan: bytes, path: Path, name: str) -> Route:
        decision: TrustDecision | None = None
        if header.has_lean_runtime:
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


def _first_gpu(settings: ModelSettings) -> int:
    for group in settings.instance_groups:
        if group.kind is DeviceKind.GPU and group.device_ids:
            return group.device_ids[0]
    return 0


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
