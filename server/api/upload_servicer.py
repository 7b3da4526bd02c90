"""`trtserve.ModelUpload`: stream a model file into the repository, then load it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc
from trtserve.server.api.status import grpc_errors
from trtserve.server.errors import InvalidArgument, NotFound
from trtserve.server.models.manager import ModelManager
from trtserve.server.repository.repository import ModelRepository


class UploadServicer(tpb_grpc.ModelUploadServicer):
    """Writes chunks to a temporary file as they arrive; nothing is visible until verified."""

    def __init__(self, manager: ModelManager, max_upload_bytes: int) -> None:
        self._manager = manager
        self._max_bytes = max_upload_bytes

    @grpc_errors
    async def UploadModel(
        self, request_iterator: AsyncIterator[tpb.UploadRequest], context: object
    ) -> tpb.UploadResponse:
        header = await _read_header(request_iterator)
        name = header.model_name
        repository = self._manager.repository
        try:
            versions = await asyncio.to_thread(repository.versions, name)
        except NotFound:  # a new model: its folder is created by the write below
            versions = []
        version = header.version or (max(versions, default=0) + 1)
        if version < 0:
            raise InvalidArgument(
                f"header.version: expected 0 or a positive integer, received {version}"
            )
        if header.total_bytes > self._max_bytes:
            raise InvalidArgument(
                f"header.total_bytes: expected at most {self._max_bytes} (max upload size), "
                f"received {header.total_bytes}"
            )
        if header.config_json:
            _check_json(header.config_json)
        size, digest = await _write_chunks(
            request_iterator,
            repository,
            name,
            f"{version}/{header.filename or 'model.plan'}",
            header.sha256 or None,
            self._max_bytes,
        )
        if header.total_bytes and size != header.total_bytes:
            raise InvalidArgument(
                f"header.total_bytes: declared {header.total_bytes}, received {size} bytes"
            )
        await self._manager.load(name, config_json=header.config_json or None)
        return tpb.UploadResponse(
            model_name=name, version=version, stored_bytes=size, sha256=digest
        )


async def _read_header(request_iterator: AsyncIterator[tpb.UploadRequest]) -> tpb.UploadHeader:
    async for first in request_iterator:
        if first.WhichOneof("part") != "header":
            raise InvalidArgument(
                f"first upload message: expected 'header', received {first.WhichOneof('part')!r}"
            )
        if not first.header.model_name:
            raise InvalidArgument("header.model_name: expected a model name, received ''")
        return first.header
    raise InvalidArgument("upload stream: expected a header message, received nothing")


def _check_json(text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            f"header.config_json: expected JSON, received invalid JSON: {error}"
        ) from error


async def _write_chunks(
    request_iterator: AsyncIterator[tpb.UploadRequest],
    repository: ModelRepository,
    name: str,
    relative_path: str,
    sha256: str | None,
    max_bytes: int,
) -> tuple[int, str]:
    """Feed the stream's chunks to the repository's atomic writer, which runs on a thread.

    The queue between them is bounded, so a fast client cannot grow the server's memory.
    """
    chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)
    loop = asyncio.get_running_loop()

    def chunk_iter() -> Iterator[bytes]:
        while True:
            item = asyncio.run_coroutine_threadsafe(chunks.get(), loop).result()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    writer = asyncio.ensure_future(
        asyncio.to_thread(
            repository.write_stream, name, relative_path, chunk_iter(), sha256, max_bytes
        )
    )

    async def feed(item: bytes | BaseException | None) -> bool:
        put = asyncio.ensure_future(chunks.put(item))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():  # the writer stopped early (too large, bad name): it has the error
            put.cancel()
            return False
        return True

    try:
        async for message in request_iterator:
            if message.WhichOneof("part") != "data":
                await feed(
                    InvalidArgument(
                        "upload stream: expected data chunks after the header, "
                        "received a second header"
                    )
                )
                break
            if not await feed(bytes(message.data)):
                break
        else:
            await feed(None)
    except BaseException:
        await feed(ConnectionError("upload stream ended before its last chunk"))
        raise
    size, digest = await writer
    return size, digest
