"""A deserialized TensorRT plan: one engine per device its instances use, and its lean runtime.

An engine is bound to the device that was current when it was deserialized, so the model
deserializes the plan once per device, on first need.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from trtserve.server.backends.base import LoadedModel, ModelInstance, Placement
from trtserve.server.backends.tensorrt_instance import TensorRTInstance
from trtserve.server.backends.tensorrt_tensors import (
    describe_tensors,
    max_batch_size,
    profile_bounds,
    tensor_spec,
)
from trtserve.server.errors import FailedPrecondition, ServerError, reworded
from trtserve.server.runtime.cuda_device import require_device, use_device
from trtserve.server.runtime.lean_cache import LeanCache, LeanRuntimeLease
from trtserve.server.runtime.routing import Route, RouteKind
from trtserve.server.runtime.trt_logger import RECORDER
from trtserve.server.specs import DeviceKind, ModelIO


class TensorRTModel(LoadedModel):
    """A deserialized plan: one engine per device, and the lean runtime lease they need."""

    def __init__(
        self,
        name: str,
        path: Path,
        plan: bytes,
        route: Route,
        lease: LeanRuntimeLease | None,
        runtimes: LeanCache,
        device_id: int,
        *,
        blocking_wait: bool = False,
    ) -> None:
        """`blocking_wait`: instances sleep while the GPU works instead of spinning."""
        self.name = name
        self._blocking_wait = blocking_wait
        self.path = path
        self.route = route
        self._plan = plan
        self._lease = lease
        self._runtimes = runtimes
        self._lock = threading.Lock()
        self._engines: dict[int, Any] = {}
        self._instances: list[TensorRTInstance] = []
        engine = self._engine(device_id)
        try:
            self.tensors = describe_tensors(engine, name)
            self._io = ModelIO(
                inputs=tuple(tensor_spec(t) for t in self.tensors if t.is_input),
                outputs=tuple(tensor_spec(t) for t in self.tensors if not t.is_input),
                max_batch_size=max_batch_size(engine, self.tensors),
            )
        except BaseException:
            # The caller releases the lease next: the engine must be gone first.
            del engine
            self._engines.clear()
            raise

    @property
    def io(self) -> ModelIO:
        return self._io

    @property
    def device_tensors(self) -> bool:
        # Instances bind or copy GPU inputs themselves (see tensorrt_bindings).
        return True

    def smallest_inputs(self, device_id: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Each input's smallest accepted shape (profile 0) and dtype: a cheap trial batch."""
        engine = self._engine(device_id)
        return {
            t.name: (profile_bounds(engine, t, 0)[0], t.dtype) for t in self.tensors if t.is_input
        }

    def create_instance(self, placement: Placement) -> ModelInstance:
        if placement.kind is not DeviceKind.GPU:
            raise FailedPrecondition(
                f"model '{self.name}': TensorRT plans run on a GPU; instance kind "
                f"'{placement.kind.value}' was requested (use KIND_GPU)"
            )
        try:
            require_device(placement.device_id)
        except ServerError as e:
            raise prefixed(e, self.name) from None
        engine = self._engine(placement.device_id)
        instance = TensorRTInstance(
            self.name, engine, self.tensors, placement, blocking_wait=self._blocking_wait
        )
        with self._lock:
            self._instances.append(instance)
        return instance

    def close(self) -> None:
        with self._lock:
            instances, self._instances = self._instances, []
            engines, self._engines = self._engines, {}
        for instance in instances:
            instance.close()
        # Engines go before the runtime that made them.
        for device_id in list(engines):
            with use_device(device_id):
                del engines[device_id]
        self._plan = b""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _engine(self, device_id: int) -> Any:
        with self._lock:
            engine = self._engines.get(device_id)
            if engine is None:
                with use_device(device_id):
                    engine = self._deserialize()
                self._engines[device_id] = engine
            return engine

    def _deserialize(self) -> Any:
        mark = RECORDER.mark()
        if self.route.kind is RouteKind.LEAN:
            assert self._lease is not None
            if self.route.host_code:
                engine = self._runtimes.deserialize_with_host_code(self._plan, self._lease.runtime)
            else:
                engine = self._lease.runtime.deserialize_cuda_engine(self._plan)
        else:
            engine = self._runtimes.deserialize_with_host_code(self._plan)
        if engine is None:
            said = "; ".join(RECORDER.errors_since(mark)) or "no message from TensorRT"
            raise DeserializationFailed(
                f"model '{self.name}': TensorRT could not deserialize {self.path} with "
                f"{self.route.describe()}: {said}",
                said,
            )
        return engine


class DeserializationFailed(FailedPrecondition):
    """TensorRT gave no engine for the plan; `tensorrt_said` holds its own words."""

    def __init__(self, message: str, tensorrt_said: str = "") -> None:
        super().__init__(message)
        self.tensorrt_said = tensorrt_said


def prefixed(error: ServerError, name: str) -> ServerError:
    """`error` with its message starting "model '<name>': " (once)."""
    prefix = f"model '{name}': "
    text = str(error)
    return error if text.startswith(prefix) else reworded(error, prefix + text)
