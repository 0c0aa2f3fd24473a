"""An aiosmtpd SMTP server on an asyncio loop of its own, in a thread: start, port, stop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiosmtpd.smtp import SMTP


class SMTPServer:
    """Serve `handler` (an aiosmtpd handler) over SMTP on `host`:`port` (0: any free port,
    read `port` once started). The email channel's inbound server; tests' and benchmarks' too."""

    def __init__(self, handler: Any, host: str = "127.0.0.1", port: int = 0, **smtp: Any) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.smtp = {"data_size_limit": 25 * 1024 * 1024, **smtp}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="jivocore-smtp", daemon=True)
        thread.start()
        future = asyncio.run_coroutine_threadsafe(
            loop.create_server(
                lambda: SMTP(self.handler, loop=loop, **self.smtp), self.host, self.port
            ),
            loop,
        )
        try:
            server = future.result(10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            raise
        self.port = server.sockets[0].getsockname()[1]
        self._loop, self._thread, self._server = loop, thread, server

    def stop(self) -> None:
        """Stop listening, drop the open connections, and end the loop's thread."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None or server is None:
            return
        self._loop = self._thread = self._server = None

        async def close() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
