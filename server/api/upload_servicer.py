"""`trtserve.ModelUpload`: stream a model file into the repository, then load it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc
from trtserve.server.api.registration import require_message
from trtserve.server.api.status import grpc_errors
from trtserve.server.errors import InvalidArgument, NotFound
from trtserve.server.models.manager import ModelManager
from trtserve.server.repository.transaction import StreamedFile

# Chunks in flight between the gRPC stream and the writer thread: bounds the server's memory.
_QUEUE_CHUNKS = 8


class UploadServicer(tpb_grpc.ModelUploadServicer):
    """Writes chunks to a temporary file as they arrive; nothing is visible until verified.

    The file is written and the model loaded as one change: if the load fails, the file is
    removed again and the previous version keeps serving.
    """

    def __init__(self, manager: ModelManager, max_upload_bytes: int) -> None:
        self._manager = manager
        self._max_bytes = max_upload_bytes

    @grpc_errors
    async def UploadModel(
        self, request_iterator: AsyncIterator[Any], context: object
    ) -> tpb.UploadResponse:
        header = await _read_header(request_iterator)
        self._check_header(header)
        name = header.model_name
        version = header.version or await self._next_version(name)
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_QUEUE_CHUNKS)
        stream = StreamedFile(
            _chunks_from(chunks, asyncio.get_running_loop(), header.total_bytes),
            header.sha256 or None,
            self._max_bytes,
        )
        load = asyncio.ensure_future(
            self._manager.load(
                name,
                config_json=header.config_json or None,
                files={f"{version}/{header.filename or 'model.plan'}": stream},
            )
        )
        await _feed(request_iterator, chunks, load)
        await load
        return tpb.UploadResponse(
            model_name=name, version=version, stored_bytes=stream.size, sha256=stream.sha256
        )

    def _check_header(self, header: tpb.UploadHeader) -> None:
        if header.version < 0:
            raise InvalidArgument(
                f"header.version: expected 0 or a positive integer, received {header.version}"
            )
        if header.total_bytes > self._max_bytes:
            raise InvalidArgument(
                f"header.total_bytes: expected at most {self._max_bytes} (max upload size), "
                f"received {header.total_bytes}"
            )
        if header.config_json:
            try:
                json.loads(header.config_json)
            except json.JSONDecodeError as error:
                raise InvalidArgument(
                    f"header.config_json: expected JSON, received invalid JSON: {error}"
                ) from error

    async def _next_version(self, name: str) -> int:
        try:
            versions = await asyncio.to_thread(self._manager.repository.versions, name)
        except NotFound:  # a new model: its folder is created by the write
            versions = []
        return max(versions, default=0) + 1


async def _read_header(request_iterator: AsyncIterator[Any]) -> tpb.UploadHeader:
    async for first in request_iterator:
        first = require_message(first)
        if first.WhichOneof("part") != "header":
            raise InvalidArgument(
                f"first upload message: expected 'header', received {first.WhichOneof('part')!r}"
            )
        if not first.header.model_name:
            raise InvalidArgument("header.model_name: expected a model name, received ''")
        header: tpb.UploadHeader = first.header
        return header
    raise InvalidArgument("upload stream: expected a header message, received nothing")


def _chunks_from(
    chunks: asyncio.Queue[bytes | BaseException | None],
    loop: asyncio.AbstractEventLoop,
    declared: int,
) -> Iterator[bytes]:
    """The chunks as the writer thread sees them; a wrong total fails the write."""
    received = 0
    while True:
        item = asyncio.run_coroutine_threadsafe(chunks.get(), loop).result()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        received += len(item)
        yield item
    if declared and received != declared:
        raise InvalidArgument(f"header.total_bytes: declared {declared}, received {received}")


async def _feed(
    request_iterator: AsyncIterator[Any],
    chunks: asyncio.Queue[bytes | BaseException | None],
    writer: asyncio.Future[Any],
) -> None:
    """Move data messages into the queue until the stream ends or the writer stops early."""

    async def put(item: bytes | BaseException | None) -> bool:
        task = asyncio.ensure_future(chunks.put(item))
        await asyncio.wait({task, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the writer stopped (too large, bad name): it holds the error
            task.cancel()
            return False
        return True

    try:
        async for message in request_iterator:
            message = require_message(message)
            if message.WhichOneof("part") != "data":
                await put(
                    InvalidArgument(
                        "upload stream: expected data chunks after the header, received "
                        "a second header"
                    )
                )
                return
            if not await put(bytes(message.data)):
                return
        await put(None)
    except BaseException:
        await put(ConnectionError("upload stream ended before its last chunk"))
        raise
