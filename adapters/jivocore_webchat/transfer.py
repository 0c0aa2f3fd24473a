"""Files over HTTP without holding them in memory: an upload is written to a temporary file as
it arrives (the CSV import reads a path), and a download is streamed as a writer in a worker
thread produces it (the CSV export writes to a binary file)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

CHUNK = 64 * 1024


class TooLarge(Exception):
    """The upload is over the limit."""


async def receive_file(request: Request, folder: str, limit: int) -> str:
    """The request's body, written to a new file in `folder` as it arrives; its path. Raises
    TooLarge (leaving no file) past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    fd, path = tempfile.mkstemp(dir=folder, suffix=".upload")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge
                await run_in_threadpool(out.write, chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path


@attrs.frozen
class Download:
    """What a handler returns to stream a file: `write` fills the binary file it is given."""

    filename: str
    media_type: str
    write: Callable[[io.RawIOBase], Any]


class _Gone(Exception):
    """The reader went away (the client disconnected): the writer stops."""


class _Sink(io.RawIOBase):
    """A binary file whose writes become chunks in a bounded queue (the writer waits when the
    reader falls behind). The first write goes at once, so a refusal made before it shows as
    an error response rather than a broken download."""

    def __init__(self, chunks: queue.Queue[Any], gone: threading.Event) -> None:
        super().__init__()
        self.chunks, self.gone = chunks, gone
        self.buffer = bytearray()
        self.sent = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        if not self.sent or len(self.buffer) >= CHUNK:
            self.put(bytes(self.buffer))
            self.buffer.clear()
            self.sent = True
        return len(data)

    def put(self, item: Any) -> None:
        while not self.gone.is_set():
            with contextlib.suppress(queue.Full):
                self.chunks.put(item, timeout=0.5)
                return
        raise _Gone

    def finish(self, error: BaseException | None) -> None:
        if error is None and self.buffer:
            self.put(bytes(self.buffer))
        self.put(error)


async def stream(download: Download) -> AsyncIterator[bytes]:
    """The download's bytes as its writer produces them in the thread pool. The first chunk is
    read here, so a writer that fails before writing anything (a refused filter) raises here,
    before the caller has answered; a failure later ends the response early, and the client
    sees an incomplete transfer."""
    chunks: queue.Queue[Any] = queue.Queue(maxsize=4)
    gone = threading.Event()
    sink = _Sink(chunks, gone)

    def produce() -> None:
        error: BaseException | None = None
        try:
            download.write(sink)
        except _Gone:
            return
        except BaseException as exc:
            error = exc
        with contextlib.suppress(_Gone):
            sink.finish(error)

    writer = asyncio.ensure_future(run_in_threadpool(produce))

    async def chunks_read() -> AsyncIterator[bytes]:
        try:
            while True:
                item = await run_in_threadpool(chunks.get)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            gone.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    chunks.get_nowait()  # frees a writer waiting to put
            with contextlib.suppress(queue.Full):
                chunks.put_nowait(None)  # and a reader waiting to get, if it was cancelled
            await writer

    body = chunks_read()
    first = await anext(body, b"")

    async def whole() -> AsyncIterator[bytes]:
        yield first
        async for chunk in body:
            yield chunk

    return whole()
