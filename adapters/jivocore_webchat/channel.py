"""WebChat: the web channel. Visitors' messages go to ``desk.receive``; operator replies leave
the outbox through ``send`` and reach the visitor's open WebSockets; committed events reach the
operators' consoles. The hub lives on the app's event loop; the desk calls in from any thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from starlette.websockets import WebSocket

from jivocore import Channel, Event, HelpDesk, Message, Outbound, hookimpl

log = logging.getLogger(__name__)

Payload = dict[str, Any]


def message_payload(message: Message, names: Callable[[str], str] | None = None) -> Payload:
    """A message as the widget and the console see it."""
    name = ""
    if message.author == "operator" and message.author_id and names is not None:
        name = names(message.author_id)
    return {
        "type": "message",
        "id": message.id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "author": str(message.author),
        "name": name,
        "text": message.text,
        "at": message.at.isoformat(),
    }


class Hub:
    """Open WebSockets: visitors by visitor id, operators by token id. Runs on one event loop;
    `push_*` may be called from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.visitors: dict[str, set[asyncio.Queue[Payload | None]]] = {}
        self.operators: dict[str, tuple[str, WebSocket]] = {}  # socket key -> (token id, ws)
        self._tasks: set[asyncio.Future[None]] = set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # visitors
    def add_visitor(self, visitor_id: str) -> asyncio.Queue[Payload | None]:
        queue: asyncio.Queue[Payload | None] = asyncio.Queue()
        self.visitors.setdefault(visitor_id, set()).add(queue)
        return queue

    def remove_visitor(self, visitor_id: str, queue: asyncio.Queue[Payload | None]) -> None:
        queues = self.visitors.get(visitor_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.visitors[visitor_id]

    def push_visitor(self, visitor_id: str, payload: Payload) -> None:
        def put() -> None:
            for queue in self.visitors.get(visitor_id, ()):
                queue.put_nowait(payload)

        self._call(put)

    def push_all_visitors(self, payload: Payload) -> None:
        def put() -> None:
            for queues in self.visitors.values():
                for queue in queues:
                    queue.put_nowait(payload)

        self._call(put)

    # operators
    def push_operators(self, payload: Payload) -> None:
        def send() -> None:
            for _, ws in list(self.operators.values()):
                self._spawn(_send_quietly(ws, payload))

        self._call(send)

    def close_tokens(self, token_ids: Iterable[str]) -> None:
        revoked = set(token_ids)

        def close() -> None:
            for key, (token_id, ws) in list(self.operators.items()):
                if token_id in revoked:
                    self.operators.pop(key, None)
                    self._spawn(_close_quietly(ws, 4401, "token revoked"))

        self._call(close)


async def _send_quietly(ws: WebSocket, payload: Payload) -> None:
    try:
        await ws.send_json(payload)
    except Exception:  # a socket closing under us: its reader will clean up
        log.debug("could not send to an operator socket", exc_info=True)


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code=code, reason=reason)
    except Exception:
        log.debug("could not close an operator socket", exc_info=True)


class WebChat:
    """The web chat channel, a plugin that registers itself::

        web = WebChat(allowed_origins=["https://shop.example"])
        desk = HelpDesk.open("helpdesk.db", plugins=[web])
        app = make_app(desk, web)  # mount it in the host's Starlette/FastAPI app

    :param name: the channel's name (``"web"``).
    :param allowed_origins: origins whose pages may open WebSockets (``"*"`` for any); the
        app's own origin is always allowed.
    """

    def __init__(self, *, name: str = "web", allowed_origins: Sequence[str] = ()) -> None:
        self.name = name
        self.allowed_origins = tuple(allowed_origins)
        self.hub = Hub()
        self.desk: HelpDesk | None = None
        self._names: dict[str, str] = {}

    @hookimpl
    def jivocore_register_channels(self, register: Callable[[Channel], None]) -> None:
        register(self)

    @hookimpl
    def jivocore_events_committed(self, desk: HelpDesk, events: Sequence[Event]) -> None:
        self.hub.push_operators(
            {
                "type": "events",
                "events": [
                    {"type": e.type, "conversation_id": e.conversation_id, "client_id": e.client_id}
                    for e in events
                ],
            }
        )
        if any(e.type in ("presence_changed", "operator_added") for e in events):
            self.hub.push_all_visitors(self.status(desk))
        if any(e.type == "presence_changed" for e in events):
            self._names.clear()

    def status(self, desk: HelpDesk) -> Payload:
        online = any(o.presence == "online" for o in desk.operators())
        return {"type": "status", "operators_online": online}

    def operator_name(self, operator_id: str) -> str:
        if operator_id not in self._names and self.desk is not None:
            self._names[operator_id] = self.desk.operator(operator_id).name
        return self._names.get(operator_id, "")

    def start(self, desk: HelpDesk) -> None:
        self.desk = desk

    def stop(self) -> None:
        """Nothing to stop: the app's server owns the sockets."""

    def send(self, outbound: Outbound) -> str | None:
        """Push an operator's message to the visitor's open sockets. A visitor with none reads it
        on their next connection (it resumes after the last sequence number they saw), so the
        message is delivered once it is stored and pushed."""
        if outbound.identity is None:
            return None
        self.hub.push_visitor(
            outbound.identity.external_id, message_payload(outbound.message, self.operator_name)
        )
        return outbound.message.id
