"""ONNX Runtime on the CPU: one InferenceSession per model instance."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtserve.server.backends.base import (
    Backend,
    ExecutionResult,
    ExecutionTimings,
    LoadedModel,
    ModelInstance,
    Placement,
)
from trtserve.server.backends.onnxruntime_options import SessionSettings, session_settings
from trtserve.server.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServerError,
    Unavailable,
)
from trtserve.server.runtime.tensor_buffers import NO_TARGETS, InputArray, RowTarget
from trtserve.server.specs import DeviceKind, ModelIO, ModelSettings, TensorSpec

# ONNX Runtime's type strings and the v2 datatypes they carry.
ORT_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


class OnnxRuntimeBackend(Backend):
    """Loads `.onnx` files and runs them with ONNX Runtime's CPU execution provider."""

    platform = "onnxruntime_onnx"
    default_filename = "model.onnx"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return False, f"onnxruntime is not installed: {e}"
        return True, ""

    def load(self, path: Path, settings: ModelSettings) -> OnnxRuntimeModel:
        options = session_settings(settings.name, settings.parameters)
        # One session validates the file and tells its tensors; instances make their own.
        session = _create_session(path, settings.name, options)
        io = _model_io(session, settings.name)
        return OnnxRuntimeModel(path, settings.name, io, options)


class OnnxRuntimeModel(LoadedModel):
    """A validated ONNX file; each instance opens its own session on it."""

    def __init__(self, path: Path, name: str, io: ModelIO, options: SessionSettings) -> None:
        self._path = path
        self._name = name
        self._io = io
        self._options = options

    @property
    def io(self) -> ModelIO:
        return self._io

    def create_instance(self, placement: Placement) -> OnnxRuntimeInstance:
        if placement.kind is not DeviceKind.CPU:
            raise FailedPrecondition(
                f"model '{self._name}' instance {placement.index}: expected a CPU placement "
                f"(the ONNX Runtime backend runs on the CPU), received "
                f"{placement.kind.value} {placement.device_id}"
            )
        # ORT's CPU arena keeps the peak of every run; string tensors are std::string objects
        # it gains nothing on, and one large request would leave hundreds of MiB held. A
        # config that sets enable_mem_arena decides for itself.
        options = self._options
        if options.memory_arena is None:
            strings = any(t.datatype == "BYTES" for t in self._io.inputs + self._io.outputs)
            options = dataclasses.replace(options, memory_arena=not strings)
        session = _create_session(self._path, self._name, options)
        return OnnxRuntimeInstance(session, self._name, self._io)

    def close(self) -> None:
        """Nothing to release: sessions belong to the instances."""


class OnnxRuntimeInstance(ModelInstance):
    """One InferenceSession, run by one scheduler thread at a time."""

    def __init__(self, session: Any, name: str, io: ModelIO) -> None:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalid

        # Looked up once: an import statement per execution costs about a microsecond.
        self._ort_invalid: type[Exception] = OrtInvalid
        self._session: Any = session
        self._name = name
        self._string_inputs = {t.name for t in io.inputs if t.datatype == "BYTES"}
        self._string_outputs = {t.name for t in io.outputs if t.datatype == "BYTES"}
        self._all_outputs = [t.name for t in io.outputs]

    def execute(
        self,
        inputs: Mapping[str, InputArray],
        output_names: Sequence[str],
        targets: Mapping[str, Sequence[RowTarget]] = NO_TARGETS,
    ) -> ExecutionResult:
        # Inputs are host arrays (device_tensors is false); outputs with targets are copied
        # into them by the data plane.
        session = self._session
        if session is None:
            raise Unavailable(f"model '{self._name}': instance is closed")
        start = time.perf_counter_ns()
        feeds = {name: self._feed(name, _host(name, array)) for name, array in inputs.items()}
        names = list(output_names) or self._all_outputs
        ready = time.perf_counter_ns()
        values = self._run(session, names, feeds)
        done = time.perf_counter_ns()
        outputs = {
            name: _bytes_array(value) if name in self._string_outputs else value
            for name, value in zip(names, values, strict=True)
        }
        end = time.perf_counter_ns()
        return ExecutionResult(outputs, ExecutionTimings(ready - start, done - ready, end - done))

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        if name in self._string_inputs:
            return _string_array(self._name, name, array)
        return np.ascontiguousarray(array)

    def _run(self, session: Any, names: list[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        try:
            return list(session.run(names, feeds))
        except self._ort_invalid as e:
            raise InvalidArgument(f"model '{self._name}': {e}") from None
        except Exception as e:
            raise Internal(f"model '{self._name}': ONNX Runtime failed: {e}") from None

    def close(self) -> None:
        # Dropping the last reference frees the session; ORT has no explicit close.
        self._session = None


def _create_session(path: Path, name: str, settings: SessionSettings) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if settings.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if settings.memory_arena is not None:
        options.enable_cpu_mem_arena = settings.memory_arena
    if settings.memory_pattern is not None:
        options.enable_mem_pattern = settings.memory_pattern
    if not path.is_file():
        raise FailedPrecondition(
            f"model '{name}': expected an ONNX model file at {path}, received no such file"
        )
    try:
        # A path, not bytes, so models with external weight files load too.
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ServerError:
        raise
    except Exception as e:
        raise FailedPrecondition(
            f"model '{name}': expected a valid ONNX model at {path}, "
            f"received one ONNX Runtime cannot load: {e}"
        ) from None


def _model_io(session: Any, name: str) -> ModelIO:
    inputs = tuple(_tensor_spec(arg, name, "input") for arg in session.get_inputs())
    outputs = tuple(_tensor_spec(arg, name, "output") for arg in session.get_outputs())
    batched = all(len(t.shape) > 0 and t.shape[0] == -1 for t in inputs + outputs)
    return ModelIO(inputs, outputs, max_batch_size=-1 if batched else 0)


def _tensor_spec(arg: Any, name: str, role: str) -> TensorSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise FailedPrecondition(
            f"model '{name}': {role} '{arg.name}': expected a tensor of one of "
            f"{', '.join(ORT_DATATYPES)}, received {arg.type}"
        )
    shape = arg.shape or []
    return TensorSpec(arg.name, datatype, tuple(d if isinstance(d, int) else -1 for d in shape))


def _utf8_text(item: object) -> str:
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _utf8_bytes(item: Any) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else bytes(item)


# Element-wise into a new object array: no intermediate list of as many references.
_TO_TEXT = np.frompyfunc(_utf8_text, 1, 1)
_TO_BYTES = np.frompyfunc(_utf8_bytes, 1, 1)
# Elements per ufunc call: the interpreter lock is handed on between calls (a few ms each),
# so the event loop keeps answering while a large string tensor is converted.
_CHUNK = 1 << 16


def _convert(function: np.ufunc, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    source, target = array.reshape(-1), out.reshape(-1)
    for start in range(0, source.size, _CHUNK):
        function(source[start : start + _CHUNK], out=target[start : start + _CHUNK])
    return out


def _string_array(model: str, tensor: str, array: np.ndarray) -> np.ndarray:
    # ORT takes str elements for string tensors; bytes elements would be stringified as "b'..'".
    try:
        return _convert(_TO_TEXT, array)
    except UnicodeDecodeError as e:
        raise InvalidArgument(
            f"model '{model}': input '{tensor}': expected UTF-8 strings for an ONNX string "
            f"tensor, received bytes that are not UTF-8 ({e.reason} at byte {e.start})"
        ) from None


def _bytes_array(value: Any) -> np.ndarray:
    array = np.asarray(value, dtype=np.object_)
    return _convert(_TO_BYTES, array)


def _host(name: str, array: InputArray) -> np.ndarray:
    """The input as a host array; the data plane never sends this backend GPU memory."""
    if not isinstance(array, np.ndarray):
        raise Internal(f"input '{name}': ONNX Runtime instances take host arrays only")
    return array
