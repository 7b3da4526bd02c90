"""Triton-compatible model configuration: parse, validate, complete and report it.

A model's configuration is the protobuf ``ModelConfig`` (``config.pbtxt`` in text format or
``config.json``, the form tritonclient's ``load_model(config=...)`` sends). It becomes the
server's ``ModelSettings``; ``complete_settings`` fills and checks it against the tensors the
model file really has, and ``config_from_settings`` turns it back into a ``ModelConfig`` for the
ModelConfig RPC.

Shapes: with ``max_batch_size > 0`` a setting's tensor shapes leave out the batch dimension
(Triton's ``dims``); ``ModelIO`` shapes are the model file's and include it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from trtserve.protocol import model_config_pb2
from trtserve.protocol.datatypes import BY_CONFIG_NAME, BY_NAME, Datatype
from trtserve.protocol.descriptor_pool import POOL
from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.repository.config_fields import unsupported_fields
from trtserve.server.specs import (
    BatchingSettings,
    DeviceKind,
    InstanceGroup,
    ModelIO,
    ModelSettings,
    PolicyKind,
    TensorSpec,
    VersionPolicy,
    WarmupInput,
    WarmupSample,
)

ONNXRUNTIME = "onnxruntime_onnx"
TENSORRT = "tensorrt_plan"
# Each platform's model file name inside a version folder when the config names none.
DEFAULT_FILENAMES: dict[str, str] = {ONNXRUNTIME: "model.onnx", TENSORRT: "model.plan"}
# Triton's `backend` field names the same platforms differently.
BACKEND_PLATFORMS: dict[str, str] = {"onnxruntime": ONNXRUNTIME, "tensorrt": TENSORRT}
_PLATFORM_BACKENDS = {platform: backend for backend, platform in BACKEND_PLATFORMS.items()}
# Where instances run when the config does not say: TensorRT needs a GPU, ONNX Runtime here
# runs on the CPU.
_DEFAULT_KIND = {ONNXRUNTIME: DeviceKind.CPU, TENSORRT: DeviceKind.GPU}

# A plain file or folder name: no separators, bounded, and never "." or "..". No leading dot
# either: hidden names are the repository's temporary files (and a user's .git or .cache).
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")

_Group = model_config_pb2.ModelInstanceGroup


def is_plain_name(name: str) -> bool:
    """Whether `name` is a plain file or folder name of the accepted characters."""
    return FILE_NAME.fullmatch(name) is not None


def parse_config_text(
    text: str, fmt: Literal["pbtxt", "json"], model_name: str
) -> model_config_pb2.ModelConfig:
    """Parse a config in protobuf text format or JSON against Triton's whole schema.

    A name that is no field of Triton's ModelConfig, and a Triton field trtserve does not
    implement (config_fields), are refused by name: a config is never read partly.
    """
    cfg = model_config_pb2.ModelConfig()
    try:
        if fmt == "pbtxt":
            text_format.Parse(text, cfg)
        elif fmt == "json":
            _check_json_data_types(text, model_name)
            json_format.Parse(text, cfg)
        else:
            raise InvalidArgument(
                f"model '{model_name}': config format: expected 'pbtxt' or 'json', received {fmt!r}"
            )
    except (text_format.ParseError, json_format.ParseError, DecodeError, ValueError) as e:
        raise InvalidArgument(_parse_failure(model_name, fmt, str(e))) from None
    unsupported = unsupported_fields(cfg)
    if unsupported:
        raise InvalidArgument(
            f"model '{model_name}': config: {', '.join(unsupported)}: not supported by this "
            "server (Triton fields it does not implement; the README lists those it does); "
            "remove them to load the model"
        )
    return cfg


# Both parsers say "Message type "inference.X" has no field named "y"" for an unknown name.
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
# The text parser starts with the position: "3:1 : Message type ...".
_POSITION = re.compile(r"^(\d+):(\d+)")


def _parse_failure(model_name: str, fmt: str, error: str) -> str:
    unknown = _NO_FIELD.search(error)
    if unknown is None:
        return (
            f"model '{model_name}': config ({fmt}): expected a valid ModelConfig, "
            f"received text that does not parse: {error}"
        )
    message_type, name = unknown.groups()
    where = _POSITION.match(error)
    at = f" (line {where.group(1)})" if where else ""
    known = [f.name for f in POOL.FindMessageTypeByName(message_type).fields]
    nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{nearest[0]}'?" if nearest else f"; its fields: {', '.join(known)}"
    short = message_type.removeprefix("inference.")
    return (
        f"model '{model_name}': config ({fmt}){at}: '{name}' is no field of {short} in "
        f"Triton's model configuration{hint}"
    )


def _check_json_data_types(text: str, model_name: str) -> None:
    # Name a data_type that is not one (the JSON parser would say only that an enum value is
    # invalid). Text that is not JSON is left to the parser's own message.
    try:
        document = json.loads(text)
    except ValueError:
        return
    for role in ("input", "output"):
        tensors = document.get(role) if isinstance(document, dict) else None
        for tensor in tensors if isinstance(tensors, list) else []:
            received = tensor.get("data_type") if isinstance(tensor, dict) else None
            if isinstance(received, str) and received not in BY_CONFIG_NAME:
                raise InvalidArgument(
                    f"model '{model_name}': {role} '{tensor.get('name', '')}': data_type: "
                    f"expected one of {', '.join(BY_CONFIG_NAME)}, received {received}"
                )


def settings_from_config(
    cfg: model_config_pb2.ModelConfig, model_name: str, default_platform: str = ""
) -> ModelSettings:
    """Validate a parsed config and turn it into settings.

    `default_platform` is used when the config names neither platform nor backend (the
    repository guesses it from the model file's extension).
    """
    if cfg.name and cfg.name != model_name:
        raise InvalidArgument(
            f"model '{model_name}': config name: expected '{model_name}' (the model's folder "
            f"or load name), received '{cfg.name}'"
        )
    platform = _platform(cfg, model_name, default_platform)
    if cfg.max_batch_size < 0:
        raise InvalidArgument(
            f"model '{model_name}': max_batch_size: expected 0 or more, "
            f"received {cfg.max_batch_size}"
        )
    if cfg.default_model_filename and not is_plain_name(cfg.default_model_filename):
        raise InvalidArgument(
            f"model '{model_name}': default_model_filename: expected a plain file name "
            f"matching {FILE_NAME.pattern}, received {cfg.default_model_filename!r}"
        )
    return ModelSettings(
        name=model_name,
        platform=platform,
        max_batch_size=cfg.max_batch_size,
        inputs=_tensors(model_name, "input", cfg.input),
        outputs=_tensors(model_name, "output", cfg.output),
        batching=_batching(cfg, model_name),
        instance_groups=_instance_groups(cfg, model_name, platform),
        default_model_filename=cfg.default_model_filename,
        parameters={key: value.string_value for key, value in cfg.parameters.items()},
        version_policy=_version_policy(cfg, model_name),
        warmups=tuple(_warmup(cfg, model_name, sample) for sample in cfg.model_warmup),
    )


_WARMUP_SOURCES = {"zero_data": "zero", "random_data": "random", "input_data_file": "file"}


def _warmup(
    cfg: model_config_pb2.ModelConfig, model_name: str, sample: model_config_pb2.ModelWarmup
) -> WarmupSample:
    where = f"model '{model_name}': model_warmup '{sample.name}'"
    if not sample.name:
        raise InvalidArgument(f"model '{model_name}': model_warmup: expected a name, received none")
    batched = cfg.max_batch_size > 0
    if batched and not 1 <= sample.batch_size <= cfg.max_batch_size:
        raise InvalidArgument(
            f"{where}: batch_size: expected 1 to max_batch_size {cfg.max_batch_size}, "
            f"received {sample.batch_size}"
        )
    if not batched and sample.batch_size > 1:
        raise InvalidArgument(
            f"{where}: batch_size: expected 0 or 1 (the model does not batch), "
            f"received {sample.batch_size}"
        )
    if not sample.inputs:
        raise InvalidArgument(f"{where}: inputs: expected at least one, received none")
    inputs = []
    for name in sorted(sample.inputs):
        item = sample.inputs[name]
        datatype = _config_datatype(f"{where}: input '{name}'", item.data_type)
        choice = item.WhichOneof("input_data_type")
        if choice is None:
            raise InvalidArgument(
                f"{where}: input '{name}': expected one of zero_data, random_data or "
                "input_data_file, received none"
            )
        file = item.input_data_file if choice == "input_data_file" else ""
        if file and not is_plain_name(file):
            raise InvalidArgument(
                f"{where}: input '{name}': input_data_file: expected a plain file name in the "
                f"model's warmup folder, received {file!r}"
            )
        if any(d < 0 for d in item.dims):
            raise InvalidArgument(
                f"{where}: input '{name}': dims: expected fixed sizes (>= 0), received "
                f"{list(item.dims)}"
            )
        inputs.append(
            (name, WarmupInput(datatype.name, tuple(item.dims), _WARMUP_SOURCES[choice], file))
        )
    batch_size = sample.batch_size if batched else 0
    return WarmupSample(sample.name, batch_size, max(sample.count, 1), tuple(inputs))


def _version_policy(cfg: model_config_pb2.ModelConfig, model_name: str) -> VersionPolicy:
    """Triton's version_policy: latest N (one by default), all, or specific versions."""
    if not cfg.HasField("version_policy"):
        return VersionPolicy()
    policy = cfg.version_policy
    choice = policy.WhichOneof("policy_choice")
    where = f"model '{model_name}': version_policy"
    if choice == "latest":
        count = policy.latest.num_versions
        if count < 1:
            raise InvalidArgument(
                f"{where}: latest num_versions: expected a number >= 1, received {count}"
            )
        return VersionPolicy(PolicyKind.LATEST, count=count)
    if choice == "specific":
        versions = list(policy.specific.versions)
        if not versions or min(versions) < 1:
            raise InvalidArgument(
                f"{where}: specific versions: expected one or more version numbers >= 1, "
                f"received {versions}"
            )
        return VersionPolicy(PolicyKind.SPECIFIC, versions=tuple(sorted(set(versions))))
    if choice == "all":
        return VersionPolicy(PolicyKind.ALL)
    return VersionPolicy()


def _platform(cfg: model_config_pb2.ModelConfig, model_name: str, default: str) -> str:
    from_backend = ""
    if cfg.backend:
        if cfg.backend not in BACKEND_PLATFORMS:
            raise InvalidArgument(
                f"model '{model_name}': backend: expected one of "
                f"{', '.join(sorted(BACKEND_PLATFORMS))}, received '{cfg.backend}'"
            )
        from_backend = BACKEND_PLATFORMS[cfg.backend]
    if cfg.platform:
        if cfg.platform not in DEFAULT_FILENAMES:
            raise InvalidArgument(
                f"model '{model_name}': platform: expected one of "
                f"{', '.join(sorted(DEFAULT_FILENAMES))}, received '{cfg.platform}'"
            )
        if from_backend and from_backend != cfg.platform:
            raise InvalidArgument(
                f"model '{model_name}': backend: expected '{_PLATFORM_BACKENDS[cfg.platform]}' "
                f"for platform '{cfg.platform}', received '{cfg.backend}'"
            )
        return cfg.platform
    platform = from_backend or default
    if not platform:
        raise InvalidArgument(
            f"model '{model_name}': platform: expected one of "
            f"{', '.join(sorted(DEFAULT_FILENAMES))} (or a backend, or a model file named "
            f"{' or '.join(sorted(DEFAULT_FILENAMES.values()))}), received none"
        )
    return platform


def _tensors(
    model_name: str,
    role: str,
    tensors: Iterable[model_config_pb2.ModelInput | model_config_pb2.ModelOutput],
) -> tuple[TensorSpec, ...]:
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    for tensor in tensors:
        if not tensor.name:
            raise InvalidArgument(
                f"model '{model_name}': {role} name: expected a non-empty name, received ''"
            )
        if tensor.name in seen:
            raise InvalidArgument(
                f"model '{model_name}': {role} '{tensor.name}': expected a unique name, "
                f"received it twice"
            )
        seen.add(tensor.name)
        datatype = _config_datatype(
            f"model '{model_name}': {role} '{tensor.name}'", tensor.data_type
        )
        bad = [d for d in tensor.dims if d < -1]
        if bad:
            raise InvalidArgument(
                f"model '{model_name}': {role} '{tensor.name}': dims: expected values of -1 "
                f"or more, received {list(tensor.dims)}"
            )
        dims = tuple(int(d) for d in tensor.dims)
        reshape = _reshape(model_name, role, tensor, dims)
        specs.append(TensorSpec(tensor.name, datatype.name, dims, reshape))
    return tuple(specs)


def _config_datatype(where: str, data_type: int) -> Datatype:
    """The v2 datatype of a config's `data_type`; InvalidArgument naming it otherwise."""
    type_name = model_config_pb2.DataType.Name(data_type)
    datatype = BY_CONFIG_NAME.get(type_name)
    if datatype is None:
        raise InvalidArgument(
            f"{where}: data_type: expected one of {', '.join(BY_CONFIG_NAME)}, received {type_name}"
        )
    return datatype


def _reshape(
    model_name: str,
    role: str,
    tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
    dims: tuple[int, ...],
) -> tuple[int, ...] | None:
    """The tensor's reshape: the same elements as `dims`, in the shape the model has."""
    if not tensor.HasField("reshape"):
        return None
    shape = tuple(int(d) for d in tensor.reshape.shape)
    where = f"model '{model_name}': {role} '{tensor.name}': reshape"
    if any(d < 0 for d in dims + shape):
        raise InvalidArgument(
            f"{where}: expected fixed sizes in dims and reshape (variable dimensions with a "
            f"reshape are not supported), received dims {list(dims)}, reshape {list(shape)}"
        )
    if math.prod(dims) != math.prod(shape):
        raise InvalidArgument(
            f"{where}: expected {math.prod(dims)} elements (as dims {list(dims)}), received "
            f"shape {list(shape)} of {math.prod(shape)}"
        )
    return shape


def _batching(cfg: model_config_pb2.ModelConfig, model_name: str) -> BatchingSettings:
    if not cfg.HasField("dynamic_batching"):
        return BatchingSettings()
    dyn = cfg.dynamic_batching
    if cfg.max_batch_size == 0:
        # No batch dimension: requests run one at a time, but the queue limit still holds.
        return BatchingSettings(max_queue_size=dyn.default_queue_policy.max_queue_size)
    for size in dyn.preferred_batch_size:
        if size < 1 or size > cfg.max_batch_size:
            raise InvalidArgument(
                f"model '{model_name}': dynamic_batching.preferred_batch_size: expected "
                f"values from 1 to max_batch_size {cfg.max_batch_size}, "
                f"received {list(dyn.preferred_batch_size)}"
            )
    return BatchingSettings(
        enabled=True,
        preferred_batch_sizes=tuple(sorted(set(dyn.preferred_batch_size))),
        max_queue_delay_us=dyn.max_queue_delay_microseconds,
        max_queue_size=dyn.default_queue_policy.max_queue_size,
    )


def _instance_groups(
    cfg: model_config_pb2.ModelConfig, model_name: str, platform: str
) -> tuple[InstanceGroup, ...]:
    default_kind = _DEFAULT_KIND[platform]
    if not cfg.instance_group:
        return (InstanceGroup(kind=default_kind),)
    groups: list[InstanceGroup] = []
    for i, group in enumerate(cfg.instance_group):
        # proto3 cannot tell an unset count from 0; Triton reads both as 1.
        count = group.count if group.count != 0 else 1
        if count < 1:
            raise InvalidArgument(
                f"model '{model_name}': instance_group[{i}].count: expected 1 or more, "
                f"received {group.count}"
            )
        if group.kind == _Group.KIND_GPU:
            kind = DeviceKind.GPU
        elif group.kind == _Group.KIND_CPU:
            kind = DeviceKind.CPU
        else:
            kind = default_kind
        bad_gpus = [g for g in group.gpus if g < 0]
        if bad_gpus:
            raise InvalidArgument(
                f"model '{model_name}': instance_group[{i}].gpus: expected device ordinals "
                f"of 0 or more, received {list(group.gpus)}"
            )
        device_ids = tuple(group.gpus) if kind is DeviceKind.GPU else ()
        groups.append(InstanceGroup(count=count, kind=kind, device_ids=device_ids))
    return tuple(groups)


def _without_batch(tensors: Sequence[TensorSpec], batched: bool) -> tuple[TensorSpec, ...]:
    if not batched:
        return tuple(tensors)
    return tuple(dataclasses.replace(t, shape=t.shape[1:]) for t in tensors)


def config_from_settings(
    settings: ModelSettings, io: ModelIO | None
) -> model_config_pb2.ModelConfig:
    """The ModelConfig the server reports for a model (tensors from `io` when undeclared)."""
    batched = settings.max_batch_size > 0
    inputs = settings.inputs
    outputs = settings.outputs
    if io is not None:
        inputs = inputs or _without_batch(io.inputs, batched)
        outputs = outputs or _without_batch(io.outputs, batched)
    cfg = model_config_pb2.ModelConfig(
        name=settings.name,
        platform=settings.platform,
        backend=_PLATFORM_BACKENDS.get(settings.platform, ""),
        max_batch_size=settings.max_batch_size,
        default_model_filename=settings.default_model_filename,
    )
    for spec in inputs:
        added = cfg.input.add(
            name=spec.name, data_type=BY_NAME[spec.datatype].config_name, dims=spec.shape
        )
        if spec.reshape is not None:
            added.reshape.shape.extend(spec.reshape)
    for spec in outputs:
        out = cfg.output.add(
            name=spec.name, data_type=BY_NAME[spec.datatype].config_name, dims=spec.shape
        )
        if spec.reshape is not None:
            out.reshape.shape.extend(spec.reshape)
    for group in settings.instance_groups:
        kind = _Group.KIND_GPU if group.kind is DeviceKind.GPU else _Group.KIND_CPU
        cfg.instance_group.add(count=group.count, kind=kind, gpus=group.device_ids)
    if settings.batching.enabled:
        dyn = cfg.dynamic_batching
        dyn.SetInParent()
        dyn.preferred_batch_size.extend(settings.batching.preferred_batch_sizes)
        dyn.max_queue_delay_microseconds = settings.batching.max_queue_delay_us
        if settings.batching.max_queue_size:
            dyn.default_queue_policy.max_queue_size = settings.batching.max_queue_size
    for key, value in settings.parameters.items():
        cfg.parameters[key].string_value = value
    policy = settings.version_policy
    if policy.kind is PolicyKind.LATEST:
        cfg.version_policy.latest.num_versions = policy.count
    elif policy.kind is PolicyKind.ALL:
        cfg.version_policy.all.SetInParent()
    else:
        cfg.version_policy.specific.versions.extend(policy.versions)
    return cfg


def complete_settings(settings: ModelSettings, io: ModelIO) -> ModelSettings:
    """Fill undeclared tensors from the model file and check declared ones against it.

    Raises FailedPrecondition naming the tensor, the expected and the received value when the
    config and the model file disagree.
    """
    batched = settings.max_batch_size > 0
    if batched:
        _check_batch_dimension(settings, io)
    _check_declared(settings, "input", settings.inputs, io.inputs, batched, require_all=True)
    _check_declared(settings, "output", settings.outputs, io.outputs, batched, require_all=False)
    return dataclasses.replace(
        settings,
        inputs=settings.inputs or _without_batch(io.inputs, batched),
        outputs=settings.outputs or _without_batch(io.outputs, batched),
    )


def _check_batch_dimension(settings: ModelSettings, io: ModelIO) -> None:
    if io.max_batch_size == 0:
        raise FailedPrecondition(
            f"model '{settings.name}': max_batch_size: expected 0 because the model file has "
            f"no variable batch dimension on every input and output, "
            f"received {settings.max_batch_size}"
        )
    if 0 < io.max_batch_size < settings.max_batch_size:
        raise FailedPrecondition(
            f"model '{settings.name}': max_batch_size: expected at most {io.max_batch_size} "
            f"(the model file's largest batch), received {settings.max_batch_size}"
        )


def _check_declared(
    settings: ModelSettings,
    role: str,
    declared: Sequence[TensorSpec],
    actual: Sequence[TensorSpec],
    batched: bool,
    require_all: bool,
) -> None:
    if not declared:
        return
    by_name = {t.name: t for t in actual}
    for spec in declared:
        real = by_name.get(spec.name)
        if real is None:
            raise FailedPrecondition(
                f"model '{settings.name}': {role} '{spec.name}': expected one of the model "
                f"file's {role}s {', '.join(repr(n) for n in by_name)}, received "
                f"'{spec.name}'"
            )
        if spec.datatype != real.datatype:
            raise FailedPrecondition(
                f"model '{settings.name}': {role} '{spec.name}': expected datatype "
                f"{real.datatype} (the model file's), received {spec.datatype}"
            )
        real_dims = real.shape[1:] if batched else real.shape
        if not _dims_compatible(spec.model_shape, real_dims):
            field = "dims" if spec.reshape is None else "reshape"
            raise FailedPrecondition(
                f"model '{settings.name}': {role} '{spec.name}': expected {field} compatible "
                f"with {list(real_dims)} (the model file's"
                f"{', batch dimension left out' if batched else ''}), "
                f"received {list(spec.model_shape)}"
            )
    if require_all:
        missing = [t.name for t in actual if t.name not in {s.name for s in declared}]
        if missing:
            raise FailedPrecondition(
                f"model '{settings.name}': {role} '{missing[0]}': expected in the config "
                f"because the model file needs it, received a config without it"
            )


def _dims_compatible(declared: Sequence[int], real: Sequence[int]) -> bool:
    # A variable dimension in the file accepts anything the config narrows it to; a fixed one
    # must be declared exactly, or requests the config allows would fail inside the backend.
    if len(declared) != len(real):
        return False
    return all(r == -1 or d == r for d, r in zip(declared, real, strict=True))
