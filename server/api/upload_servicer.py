"""`trtserve.ModelUpload`: stream a model file into the repository, then load it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.protocol import trtserve_pb2_grpc as tpb_grpc
from trtserve.server.api.registration import require_message
from trtserve.server.dataplane.dataplane import DataPlane
from trtserve.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from trtserve.server.limits import check_upload_size
from trtserve.server.repository.repository import check_model_name, check_relative_path
from trtserve.server.repository.staging import StagedFile, stage

# Chunks in flight between the gRPC stream and the writer thread: bounds the server's memory.
_QUEUE_CHUNKS = 8


class UploadServicer(tpb_grpc.ModelUploadServicer):
    """Writes chunks to a staged file as they arrive; nothing is visible until verified.

    The stream is received without the model's lock, so a slow or frozen client never blocks
    unload or reload of the model; a client silent for `upload_idle_timeout_s` is dropped.
    The complete file is then moved into place and the model loaded as one change: if the
    load fails, the file is removed again and the previous version keeps serving.
    """

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._limits = plane.limits
        # Versions being uploaded now, per model, so two uploads never pick the same one.
        self._writing: dict[str, set[int]] = {}

    async def UploadModel(
        self, request_iterator: AsyncIterator[Any], context: object
    ) -> tpb.UploadResponse:
        with self._limits.uploads.slot():
            request_iterator = _idle_limited(request_iterator, self._limits.upload_idle_timeout_s)
            header = await _read_header(request_iterator)
            name = check_model_name(header.model_name)
            self._check_header(header)
            version = await self._reserve_version(name, header.version)
            try:
                return await self._store_and_load(request_iterator, header, version)
            finally:
                self._release(name, version)

    async def _store_and_load(
        self, request_iterator: AsyncIterator[Any], header: tpb.UploadHeader, version: int
    ) -> tpb.UploadResponse:
        name = header.model_name
        relative_path = f"{version}/{header.filename or 'model.plan'}"
        check_relative_path(relative_path)
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_QUEUE_CHUNKS)
        writer = asyncio.ensure_future(
            asyncio.to_thread(
                stage,
                self._plane.repository,
                name,
                relative_path,
                _chunks_from(chunks, asyncio.get_running_loop(), header.total_bytes),
                header.sha256 or None,
                self._limits.max_upload_bytes,
            )
        )
        # When the stream fails first, the writer's own error (the stream ended) is expected.
        writer.add_done_callback(lambda done: done.cancelled() or done.exception())
        await _feed(request_iterator, chunks, writer)
        try:
            # Shielded: the thread writes on regardless, and its file must not be lost.
            staged = await asyncio.shield(writer)
        except asyncio.CancelledError:
            writer.add_done_callback(_discard_staged)
            raise
        try:
            await self._plane.load(name, header.config_json or None, {relative_path: staged})
        finally:
            await asyncio.to_thread(staged.discard)
        return tpb.UploadResponse(
            model_name=name, version=version, stored_bytes=staged.size, sha256=staged.sha256
        )

    def _check_header(self, header: tpb.UploadHeader) -> None:
        if header.version < 0:
            raise InvalidArgument(
                f"header.version: expected 0 or a positive integer, received {header.version}"
            )
        check_upload_size(
            f"model '{header.model_name}' header.total_bytes",
            header.total_bytes,
            self._limits.max_upload_bytes,
        )
        if header.config_json:
            try:
                json.loads(header.config_json)
            except json.JSONDecodeError as error:
                raise InvalidArgument(
                    f"header.config_json: expected JSON, received invalid JSON: {error}"
                ) from error

    async def _reserve_version(self, name: str, requested: int) -> int:
        """The version to write (`requested`, or one above the newest), held until released."""
        try:
            versions = await asyncio.to_thread(self._plane.repository.versions, name)
        except NotFound:  # a new model: its folder is created by the write
            versions = []
        # No await from here on: the choice and the reservation are one step on the loop.
        writing = self._writing.setdefault(name, set())
        version = requested or (max([*versions, *writing], default=0) + 1)
        if version in writing:
            raise FailedPrecondition(
                f"model '{name}' version {version}: expected no other upload of it in "
                "progress, received a second one; retry when the first has finished"
            )
        writing.add(version)
        return version

    def _release(self, name: str, version: int) -> None:
        writing = self._writing[name]
        writing.discard(version)
        if not writing:  # names come from clients: keep no entry for each one ever seen
            del self._writing[name]


def _discard_staged(writer: asyncio.Future[StagedFile]) -> None:
    """Remove the file of an upload whose client went away while it was being written."""
    if not writer.cancelled() and writer.exception() is None:
        writer.result().discard()


async def _idle_limited(messages: AsyncIterator[Any], idle_s: float) -> AsyncIterator[Any]:
    """The stream's messages; DeadlineExceeded when none arrives for `idle_s` seconds."""
    iterator = aiter(messages)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"upload stream: expected a message within {idle_s:g} s "
                "(upload_idle_timeout_s), received none; the upload was dropped"
            ) from None
        yield message


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
