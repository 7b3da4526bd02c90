"""The v2 replies other than inference, built from data plane calls; and load requests read."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.dataplane.cuda_region import CudaRegionStatus
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.dataplane.system_region import SystemRegionStatus
from trtserve.server.errors import InvalidArgument
from trtserve.server.repository.model_config import config_from_settings
from trtserve.server.repository.repository import check_relative_path
from trtserve.server.v2.statistics import model_statistics


def required_name(value: str, field: str) -> str:
    """`value`, which must name a model; InvalidArgument naming `field` when empty."""
    if not value:
        raise InvalidArgument(f"{field}: expected a model name, received an empty string")
    return value


def server_metadata(plane: DataPlane) -> pb.ServerMetadataResponse:
    info = plane.info()
    return pb.ServerMetadataResponse(
        name=info.name, version=info.version, extensions=info.extensions
    )


def model_metadata(plane: DataPlane, name: str, version: str) -> pb.ModelMetadataResponse:
    """Tensors as clients send them (-1 for the batch dimension) and every served version."""
    model = plane.model(required_name(name, "name"), version)
    batch = [-1] if model.settings.max_batch_size > 0 else []
    reply = pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(v) for v in plane.versions(model.name)],
        platform=model.settings.platform,
    )
    for spec in model.inputs.values():
        reply.inputs.add(name=spec.name, datatype=spec.datatype, shape=batch + list(spec.shape))
    for spec in model.outputs.values():
        reply.outputs.add(name=spec.name, datatype=spec.datatype, shape=batch + list(spec.shape))
    return reply


def model_config(plane: DataPlane, name: str, version: str) -> pb.ModelConfigResponse:
    model = plane.model(required_name(name, "name"), version)
    return pb.ModelConfigResponse(config=config_from_settings(model.settings, model.io))


def statistics(plane: DataPlane, name: str, version: str) -> pb.ModelStatisticsResponse:
    """Every served version's statistics (only `name`, `version` when given)."""
    return model_statistics(plane.statistics(name, version))


async def repository_index(plane: DataPlane, ready_only: bool) -> pb.RepositoryIndexResponse:
    reply = pb.RepositoryIndexResponse()
    for entry in await plane.index(ready_only=ready_only):
        reply.models.add(
            name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
        )
    return reply


def system_regions(plane: DataPlane, name: str) -> pb.SystemSharedMemoryStatusResponse:
    reply = pb.SystemSharedMemoryStatusResponse()
    _fill_regions(reply, plane.system_regions(name))
    return reply


def cuda_regions(plane: DataPlane, name: str) -> pb.CudaSharedMemoryStatusResponse:
    reply = pb.CudaSharedMemoryStatusResponse()
    _fill_regions(reply, plane.cuda_regions(name))
    return reply


def _fill_regions(
    reply: pb.SystemSharedMemoryStatusResponse | pb.CudaSharedMemoryStatusResponse,
    statuses: Sequence[SystemRegionStatus] | Sequence[CudaRegionStatus],
) -> None:
    """Each region's status under its name; the records' fields are the message's."""
    for status in statuses:
        entry = reply.regions[status.name]
        for field in dataclasses.fields(status):
            setattr(entry, field.name, getattr(status, field.name))


def load_parameters(
    request: pb.RepositoryModelLoadRequest,
) -> tuple[str | None, dict[str, bytes]]:
    """Split the `config` JSON and `file:<version>/<name>` overrides of a load request."""
    config_json: str | None = None
    files: dict[str, bytes] = {}
    for key, param in request.parameters.items():
        kind = param.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise InvalidArgument(f"parameter 'config': expected string_param, received {kind}")
            config_json = param.string_param
        elif key.startswith("file:"):
            if kind != "bytes_param":
                raise InvalidArgument(f"parameter '{key}': expected bytes_param, received {kind}")
            relative_path = key.removeprefix("file:")
            check_relative_path(relative_path)
            files[relative_path] = param.bytes_param
        else:
            raise InvalidArgument(
                f"unknown load parameter '{key}'; expected 'config' or 'file:<version>/<name>'"
            )
    if files and config_json is None:
        raise InvalidArgument(
            "parameter 'config': required when file overrides are sent (as tritonclient does)"
        )
    return config_json, files
