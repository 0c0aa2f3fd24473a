"""The ASGI app (Starlette): the visitor widget and its WebSocket, the operator console, the
HTTP API the console uses and its OpenAPI document. `make_app(desk, web)` builds one; a host
mounts it (``Mount("/help", app=make_app(desk, web))``) or `jivocore serve` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import jivocore_crm
import jivocore_deals
import jivocore_tags
import jivocore_tasks
from jivocore import (
    ClientBlocked,
    ClientIdentity,
    ConflictError,
    Conversation,
    HelpDesk,
    InvalidTransition,
    JivoError,
    NotFoundError,
    Operator,
    PermissionDenied,
    Role,
    State,
    ValidationError,
    Vetoed,
)

from . import auth
from .auth import Unauthorized, WebToken
from .channel import Payload, WebChat, message_payload

log = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = {
    "webchat_max_message_bytes": 16 * 1024,  # HTTP body or WebSocket frame: 413 / close 1009
    "webchat_rate_burst": 10,  # messages a visitor may send at once
    "webchat_rate_per_second": 1.0,  # and then this many a second
    "webchat_tick": 0.2,  # seconds between outbox passes
}

_STATUS: tuple[tuple[type[Exception], int], ...] = (  # the most specific class first
    (Unauthorized, 401),
    (ValidationError, 422),
    (NotFoundError, 404),
    (ClientBlocked, 403),
    (PermissionDenied, 403),
    (Vetoed, 409),
    (InvalidTransition, 409),
    (ConflictError, 409),
    (JivoError, 400),
)


def _plain(value: Any) -> Any:
    """What the converter leaves that JSON lacks: durations (seconds), sets, amounts."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_plain, ensure_ascii=False).encode()


def status_of(exc: Exception) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def error(status: int, kind: str, message: str, **headers: str) -> JSONResponse:
    body = {"error": kind, "message": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers or None)


class RateLimit:
    """A token bucket per visitor: `burst` at once, then `rate` a second."""

    def __init__(
        self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.rate, self.clock = burst, rate, clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if the visitor may send now (and counts it), else seconds to wait."""
        now = self.clock()
        tokens, then = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


@attrs.frozen
class Field:
    name: str
    type: str = "string"  # JSON schema type
    required: bool = False


@attrs.frozen
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Callable[[Call], Any]
    body: tuple[Field, ...] = ()
    query: tuple[Field, ...] = ()
    auth: str = "operator"  # operator | visitor | none
    tag: str = "console"


@attrs.define
class Call:
    """What a handler gets: the desk, who calls, and the request's validated input."""

    desk: HelpDesk
    web: WebChat
    state: AppState
    params: dict[str, str]
    body: dict[str, Any]
    query: dict[str, Any]
    operator: Operator | None = None
    token: WebToken | None = None
    visitor_id: str | None = None

    @property
    def me(self) -> Operator:
        assert self.operator is not None
        return self.operator


class AppState:
    def __init__(self, desk: HelpDesk, web: WebChat, settings: Mapping[str, Any]) -> None:
        self.desk, self.web = desk, web
        self.settings = {**DEFAULTS, **{k: v for k, v in settings.items() if k in DEFAULTS}}
        self.secret = auth.visitor_secret(desk)
        self.limit = RateLimit(
            int(self.settings["webchat_rate_burst"]),
            float(self.settings["webchat_rate_per_second"]),
        )
        self.max_bytes = int(self.settings["webchat_max_message_bytes"])
        self.wake = asyncio.Event()

    def deliver_soon(self) -> None:
        loop = self.web.hub.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake.set)


# --- helpers the handlers share ---------------------------------------------------------------


def _json(desk: HelpDesk, value: Any) -> Any:
    return desk.converter.unstructure(value)


def _visible(call: Call, conversation_id: str) -> Conversation:
    """The conversation, if the operator may see it: any in the inbox, else as the engine's
    statistics rule says (took part, manager, sees all)."""
    conversation = call.desk.conversation(conversation_id)
    if conversation.state != State.INBOX:
        call.desk.statistics(conversation_id, operator_id=call.me.id)
    return conversation


def _conversation_view(call: Call, conversation: Conversation) -> dict[str, Any]:
    desk = call.desk
    client = desk.client(conversation.client_id)
    return {
        "conversation": _json(desk, conversation),
        "client": _json(desk, client),
        "preview": next(
            iter(m.text for m in reversed(desk.messages(conversation.id)[-1:])),
            "",
        ),
    }


def _visitor_conversation(desk: HelpDesk, channel: str, visitor_id: str) -> Conversation | None:
    with desk.reading() as tx:
        identities = list(
            tx.select(ClientIdentity, {"channel": channel, "external_id": visitor_id}, limit=1)
        )
        if not identities:
            return None
        found = list(
            tx.select(
                Conversation,
                {"client_id": identities[0].client_id, "channel": channel},
                order=("-created",),
                limit=1,
            )
        )
        return found[0] if found else None


def _text(call: Call, name: str = "text") -> str:
    value = call.body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string", field=name)
    return value


# --- endpoints --------------------------------------------------------------------------------


def login(call: Call) -> Any:
    token, saved = auth.log_in(call.desk, call.body["login"], call.body["password"])
    operator = call.desk.set_presence(saved.operator_id, "online")
    return {"token": token, "operator": _json(call.desk, operator)}


def logout(call: Call) -> Any:
    assert call.token is not None
    auth.revoke_token(call.desk, call.token)
    call.web.hub.close_tokens([call.token.id])
    return {"ok": True}


def me(call: Call) -> Any:
    return _json(call.desk, call.me)


def operators(call: Call) -> Any:
    return [_json(call.desk, o) for o in call.desk.operators()]


def add_operator(call: Call) -> Any:
    if call.me.role != Role.ADMIN:
        raise PermissionDenied("only an admin adds operators")
    role = call.body.get("role", "operator")
    operator = call.desk.add_operator(_text(call, "name"), role=role)
    auth.add_login(call.desk, operator.id, _text(call, "login"), _text(call, "password"))
    return _json(call.desk, operator)


def revoke(call: Call) -> Any:
    revoked = auth.revoke(call.desk, call.me, call.params["operator_id"])
    call.web.hub.close_tokens(revoked)
    return {"revoked": len(revoked)}


def presence(call: Call) -> Any:
    return _json(call.desk, call.desk.set_presence(call.me.id, _text(call, "presence")))


def inbox(call: Call) -> Any:
    return [_conversation_view(call, c) for c in call.desk.inbox(call.me.id)]


def chats(call: Call) -> Any:
    return [_conversation_view(call, c) for c in call.desk.chats(call.me.id)]


def archive(call: Call) -> Any:
    q = call.query
    page = call.desk.archive(
        call.me.id,
        text=q.get("text") or None,
        outcome=q.get("outcome") or None,
        channel=q.get("channel") or None,
        tags=[q["tag"]] if q.get("tag") else (),
        after=q.get("after") or None,
        limit=int(q.get("limit") or 50),
    )
    items = []
    for conversation in page.items:
        view = _conversation_view(call, conversation)
        view["statistics"] = _json(
            call.desk, call.desk.statistics(conversation.id, operator_id=call.me.id)
        )
        items.append(view)
    return {"items": items, "next": page.next}


def conversation(call: Call) -> Any:
    found = _visible(call, call.params["conversation_id"])
    view = _conversation_view(call, found)
    view["messages"] = [
        message_payload(m, call.web.operator_name) for m in call.desk.messages(found.id)
    ]
    if found.state != State.INBOX:
        view["statistics"] = _json(
            call.desk, call.desk.statistics(found.id, operator_id=call.me.id)
        )
    return view


def _command(name: str) -> Callable[[Call], Any]:
    def run(call: Call) -> Any:
        method = getattr(call.desk, name)
        return _json(call.desk, method(call.params["conversation_id"], call.me.id))

    run.__name__ = name
    return run


def reply(call: Call) -> Any:
    message = call.desk.reply(call.params["conversation_id"], call.me.id, _text(call))
    call.state.deliver_soon()
    return message_payload(message, call.web.operator_name)


def transfer(call: Call) -> Any:
    to = _text(call, "operator_id")
    return _json(call.desk, call.desk.transfer(call.params["conversation_id"], call.me.id, to))


def invite(call: Call) -> Any:
    to = _text(call, "operator_id")
    return _json(call.desk, call.desk.invite(call.params["conversation_id"], call.me.id, to))


def tag(call: Call) -> Any:
    saved = jivocore_tags.tag_conversation(
        call.desk, call.params["conversation_id"], _text(call, "name"), call.me.id
    )
    return _json(call.desk, saved)


def _when(value: Any, default: datetime) -> datetime:
    if value in (None, ""):
        return default
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ValidationError(f"{value!r} is not an ISO date and time", field="due") from exc
    return when if when.tzinfo else when.replace(tzinfo=default.tzinfo)


def task(call: Call) -> Any:
    due = _when(call.body.get("due"), call.desk.clock.now() + timedelta(days=1))
    saved = jivocore_tasks.task_from_conversation(
        call.desk, call.params["conversation_id"], call.me.id, _text(call, "title"), due
    )
    return _json(call.desk, saved)


def deal(call: Call) -> Any:
    amount = call.body.get("amount") or "0"
    try:
        value = Decimal(str(amount))
    except ArithmeticError as exc:
        raise ValidationError(f"{amount!r} is not an amount", field="amount") from exc
    saved = jivocore_deals.deal_from_conversation(
        call.desk, call.params["conversation_id"], call.me.id, _text(call, "title"), amount=value
    )
    return _json(call.desk, saved)


def block(call: Call) -> Any:
    return _json(call.desk, call.desk.block(call.params["client_id"], call.me.id))


def clients(call: Call) -> Any:
    q = call.query
    listing = jivocore_crm.find_clients(
        call.desk,
        call.me.id,
        jivocore_crm.ClientFilter(
            responsible_id=q.get("responsible_id") or None,
            statuses=[q["status"]] if q.get("status") else (),
            tags=[q["tag"]] if q.get("tag") else (),
            text=q.get("text") or "",
        ),
        after=q.get("after") or None,
        limit=int(q.get("limit") or 50),
    )
    items = [_json(call.desk, c) for c in listing.items]
    return {"items": items, "next": listing.next, "count": listing.count}


def add_client(call: Call) -> Any:
    b = call.body
    saved = jivocore_crm.add_client(
        call.desk,
        call.me.id,
        _text(call, "name"),
        emails=[b["email"]] if b.get("email") else (),
        phones=[b["phone"]] if b.get("phone") else (),
        status=b.get("status") or None,
    )
    return _json(call.desk, saved)


def client(call: Call) -> Any:
    client_id = call.params["client_id"]
    found = call.desk.client(client_id, operator_id=call.me.id)
    tasks = jivocore_tasks.find_tasks(call.desk, call.me.id, client_id=client_id, done=None)
    deals = jivocore_deals.find_deals(call.desk, call.me.id, client_id=client_id)
    return {
        "client": _json(call.desk, found),
        "tasks": [_json(call.desk, t) for t in tasks.items],
        "deals": [_json(call.desk, d) for d in deals.items],
    }


def statuses(call: Call) -> Any:
    return list(jivocore_crm.statuses(call.desk))


def visitor_session(call: Call) -> Any:
    visitor_id, token = auth.new_visitor(call.state.secret)
    return {"visitor_id": visitor_id, "token": token}


def visitor_messages(call: Call) -> Any:
    assert call.visitor_id is not None
    found = _visitor_conversation(call.desk, call.web.name, call.visitor_id)
    if found is None:
        return {"conversation_id": None, "messages": []}
    after = int(call.query.get("after") or 0)
    if call.query.get("conversation_id") not in (None, "", found.id):
        after = 0
    messages = call.desk.messages(found.id, after_seq=after)
    return {
        "conversation_id": found.id,
        "messages": [message_payload(m, call.web.operator_name) for m in messages],
    }


def visitor_send(call: Call) -> Any:
    assert call.visitor_id is not None
    message = receive_from_visitor(
        call.state, call.visitor_id, _text(call), call.body.get("id"), call.body.get("name")
    )
    return message


def receive_from_visitor(
    state: AppState, visitor_id: str, text: str, client_id: Any, name: Any
) -> Payload:
    """A visitor's message into the desk; pushed to the visitor's other open tabs too."""
    message = state.desk.receive(
        state.web.name,
        visitor_id,
        text,
        message_id=f"{visitor_id}:{client_id}" if client_id else None,
        name=str(name) if name else None,
    )
    payload = message_payload(message)
    state.web.hub.push_visitor(visitor_id, payload)
    return payload


S, INT = "string", "integer"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/api/login",
        "Log in: a bearer token for the console; the operator goes online",
        login,
        body=(Field("login", S, True), Field("password", S, True)),
        auth="none",
    ),
    Endpoint("POST", "/api/logout", "Revoke this token (its WebSockets close)", logout),
    Endpoint("GET", "/api/me", "The operator this token belongs to", me),
    Endpoint("GET", "/api/operators", "Every operator, by name", operators),
    Endpoint(
        "POST",
        "/api/operators",
        "Add an operator with a console login (admins)",
        add_operator,
        body=(
            Field("name", S, True),
            Field("login", S, True),
            Field("password", S, True),
            Field("role", S),
        ),
    ),
    Endpoint(
        "POST",
        "/api/operators/{operator_id}/revoke",
        "Revoke every token of an operator (their own, or anyone's for admins)",
        revoke,
    ),
    Endpoint(
        "POST",
        "/api/presence",
        "Set my presence: online, away, offline",
        presence,
        body=(Field("presence", S, True),),
    ),
    Endpoint("GET", "/api/inbox", "Inbox: waiting conversations, less those I ignored", inbox),
    Endpoint("GET", "/api/chats", "Chats: my active conversations", chats),
    Endpoint(
        "GET",
        "/api/archive",
        "All: closed conversations I may see, with statistics; search and filters",
        archive,
        query=(
            Field("text"),
            Field("outcome"),
            Field("channel"),
            Field("tag"),
            Field("after"),
            Field("limit", INT),
        ),
    ),
    Endpoint(
        "GET",
        "/api/conversations/{conversation_id}",
        "A conversation with its client, messages and statistics",
        conversation,
    ),
    *(
        Endpoint(
            "POST",
            f"/api/conversations/{{conversation_id}}/{name}",
            f"{name.capitalize()} the conversation",
            _command(name),
        )
        for name in ("accept", "ignore", "close", "join", "leave")
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/reply",
        "Reply to the client",
        reply,
        body=(Field("text", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/transfer",
        "Transfer to an online colleague",
        transfer,
        body=(Field("operator_id", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/invite",
        "Invite an online colleague",
        invite,
        body=(Field("operator_id", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/tags",
        "Add a tag to the conversation and its client",
        tag,
        body=(Field("name", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/tasks",
        "Create a task on the conversation's client",
        task,
        body=(Field("title", S, True), Field("due", S)),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/deals",
        "Create a deal on the conversation's client",
        deal,
        body=(Field("title", S, True), Field("amount", S)),
    ),
    Endpoint(
        "GET",
        "/api/clients",
        "CRM: clients I may see, filtered",
        clients,
        query=(
            Field("responsible_id"),
            Field("status"),
            Field("tag"),
            Field("text"),
            Field("after"),
            Field("limit", INT),
        ),
        tag="crm",
    ),
    Endpoint(
        "POST",
        "/api/clients",
        "CRM: add a client",
        add_client,
        body=(Field("name", S, True), Field("email"), Field("phone"), Field("status")),
        tag="crm",
    ),
    Endpoint("GET", "/api/statuses", "CRM: the client statuses", statuses, tag="crm"),
    Endpoint(
        "GET",
        "/api/clients/{client_id}",
        "CRM: a client with their tasks and deals",
        client,
        tag="crm",
    ),
    Endpoint(
        "POST",
        "/api/clients/{client_id}/block",
        "Block the client (closes their open conversations)",
        block,
        tag="crm",
    ),
    Endpoint(
        "POST",
        "/api/visitor/session",
        "A new visitor id and its signed token",
        visitor_session,
        auth="none",
        tag="visitor",
    ),
    Endpoint(
        "GET",
        "/api/visitor/messages",
        "The visitor's conversation after a sequence number",
        visitor_messages,
        query=(Field("conversation_id"), Field("after", INT)),
        auth="visitor",
        tag="visitor",
    ),
    Endpoint(
        "POST",
        "/api/visitor/messages",
        "The visitor writes (rate-limited: 429 with Retry-After)",
        visitor_send,
        body=(Field("text", S, True), Field("id"), Field("name")),
        auth="visitor",
        tag="visitor",
    ),
)

SOCKETS = {
    "/api/visitor/ws": "Visitor WebSocket (?token=&conversation_id=&after=)",
    "/api/operator/ws": "Operator WebSocket for live updates (?token=)",
}


def openapi(endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the endpoint table the routes are made from."""
    error_ref = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {}
    for e in endpoints:
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__ + "_" + e.method.lower(),
            "tags": [e.tag],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "default": {
                    "description": "An error",
                    "content": {"application/json": {"schema": error_ref}},
                },
            },
        }
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _path_params(e.path)
        ]
        params += [
            {"name": f.name, "in": "query", "required": f.required, "schema": {"type": f.type}}
            for f in e.query
        ]
        if params:
            op["parameters"] = params
        if e.body:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(e.body)}},
            }
        if e.auth != "none":
            op["security"] = [{e.auth: []}]
        paths.setdefault(e.path, {})[e.method.lower()] = op
    for path, summary in SOCKETS.items():
        paths[path] = {
            "get": {
                "summary": summary,
                "operationId": path.strip("/").replace("/", "_"),
                "tags": ["websocket"],
                "responses": {"101": {"description": "Switching protocols"}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "jivocore web chat", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer"},
                "visitor": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message", "status"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "status": {"type": "integer"},
                    },
                }
            },
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: {"type": f.type} for f in fields},
        "required": [f.name for f in fields if f.required],
    }


# --- the app ----------------------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _check(fields: tuple[Field, ...], data: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        value = data.get(f.name)
        if value is None:
            if f.required:
                raise ValidationError(f"{where} needs {f.name!r}", field=f.name)
            continue
        if f.type == "integer":
            try:
                value = int(value)
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"{f.name} must be an integer", field=f.name) from exc
            if value < 0 or value > 10**9:
                raise ValidationError(f"{f.name} is out of range", field=f.name)
        elif not isinstance(value, str):
            raise ValidationError(f"{f.name} must be a string", field=f.name)
        elif "\x00" in value:
            raise ValidationError(f"{f.name} contains a NUL character", field=f.name)
        out[f.name] = value
    return out


def _route(state: AppState, e: Endpoint) -> Route:
    async def endpoint(request: Request) -> Response:
        body: dict[str, Any] = {}
        if e.method == "POST":
            raw = await request.body()
            if len(raw) > state.max_bytes:
                return error(413, "PayloadTooLarge", f"the body exceeds {state.max_bytes} bytes")
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    return error(400, "BadRequest", "the body is not JSON")
                if not isinstance(parsed, dict):
                    return error(400, "BadRequest", "the body is not a JSON object")
                body = parsed
            body = _check(e.body, body, "the body")
        query = _check(e.query, request.query_params, "the query")
        call = Call(
            state.desk,
            state.web,
            state,
            dict(request.path_params),
            body,
            query,
        )
        if e.auth == "operator":
            call.operator, call.token = await run_in_threadpool(
                auth.authenticate, state.desk, _bearer(request)
            )
        elif e.auth == "visitor":
            call.visitor_id = auth.visitor_of(state.secret, _bearer(request))
            if e.method == "POST":
                wait = state.limit.take(call.visitor_id)
                if wait:
                    seconds = str(math.ceil(wait))
                    return error(
                        429,
                        "TooManyRequests",
                        f"too many messages; try again in {seconds} s",
                        **{"Retry-After": seconds},
                    )
        result = await run_in_threadpool(e.handler, call)
        return Json(result)

    endpoint.__name__ = e.handler.__name__
    return Route(e.path, endpoint, methods=[e.method])


def _origin_allowed(web: WebChat, ws: WebSocket) -> bool:
    origin = ws.headers.get("origin")
    if origin is None or "*" in web.allowed_origins or origin in web.allowed_origins:
        return True
    host = ws.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def visitor_socket(ws: WebSocket) -> None:
    state: AppState = ws.app.state.webchat
    desk, web = state.desk, state.web
    if not _origin_allowed(web, ws):
        await ws.close(code=1008, reason="origin not allowed")
        return
    token = ws.query_params.get("token")
    try:
        visitor_id = auth.visitor_of(state.secret, token) if token else None
    except Unauthorized:
        visitor_id = None
    await ws.accept()
    if visitor_id is None:
        visitor_id, token = auth.new_visitor(state.secret)
        await ws.send_json({"type": "welcome", "visitor_id": visitor_id, "token": token})
    queue = web.hub.add_visitor(visitor_id)
    try:
        await ws.send_json(await run_in_threadpool(web.status, desk))
        found = await run_in_threadpool(_visitor_conversation, desk, web.name, visitor_id)
        sent: dict[str, int] = {}
        if found is not None:
            after = 0
            if ws.query_params.get("conversation_id") == found.id:
                with contextlib.suppress(ValueError):
                    after = max(0, int(ws.query_params.get("after", "0")))
            history = await run_in_threadpool(desk.messages, found.id, after_seq=after)
            for message in history:
                await ws.send_json(message_payload(message, web.operator_name))
            sent[found.id] = history[-1].seq if history else after
        pusher = asyncio.ensure_future(_push(ws, queue, sent))
        try:
            await _read_visitor(ws, state, visitor_id)
        finally:
            pusher.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        web.hub.remove_visitor(visitor_id, queue)


async def _push(ws: WebSocket, queue: asyncio.Queue[Payload | None], sent: dict[str, int]) -> None:
    while True:
        payload = await queue.get()
        if payload is None:
            return
        if payload.get("type") == "message":
            last = sent.get(payload["conversation_id"], 0)
            if payload["seq"] <= last:
                continue  # the history already had it
            sent[payload["conversation_id"]] = payload["seq"]
        with contextlib.suppress(Exception):
            await ws.send_json(payload)


async def _read_visitor(ws: WebSocket, state: AppState, visitor_id: str) -> None:
    while True:
        raw = await ws.receive_text()
        if len(raw.encode()) > state.max_bytes:
            await ws.close(code=1009, reason="message too big")
            return
        try:
            data = json.loads(raw)
        except ValueError:
            await ws.send_json({"type": "error", "status": 400, "message": "not JSON"})
            continue
        if not isinstance(data, dict) or data.get("type") != "message":
            continue
        wait = state.limit.take(visitor_id)
        if wait:
            await ws.send_json(
                {
                    "type": "error",
                    "status": 429,
                    "retry_after": math.ceil(wait),
                    "id": data.get("id"),
                    "message": f"too many messages; try again in {math.ceil(wait)} s",
                }
            )
            continue
        try:
            text = data.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValidationError("a message needs text", field="text")
            await run_in_threadpool(
                receive_from_visitor, state, visitor_id, text, data.get("id"), data.get("name")
            )
            await ws.send_json({"type": "ack", "id": data.get("id")})
        except JivoError as exc:
            await ws.send_json(
                {
                    "type": "error",
                    "status": status_of(exc),
                    "error": type(exc).__name__,
                    "id": data.get("id"),
                    "message": str(exc),
                }
            )


async def operator_socket(ws: WebSocket) -> None:
    state: AppState = ws.app.state.webchat
    hub = state.web.hub
    if not _origin_allowed(state.web, ws):
        await ws.close(code=1008, reason="origin not allowed")
        return
    try:
        _, token = await run_in_threadpool(
            auth.authenticate, state.desk, ws.query_params.get("token")
        )
    except Unauthorized:
        await ws.close(code=4401, reason="token unknown or revoked")
        return
    await ws.accept()
    key = f"{token.id}:{id(ws)}"
    hub.operators[key] = (token.id, ws)
    try:
        await ws.send_json({"type": "hello"})
        while True:
            raw = await ws.receive_text()
            if len(raw.encode()) > state.max_bytes:
                await ws.close(code=1009, reason="message too big")
                return
    except WebSocketDisconnect:
        pass
    finally:
        hub.operators.pop(key, None)


async def _worker(state: AppState) -> None:
    """The outbox and the scheduler: deliver replies at once when woken, and every tick; run
    due timers, index the archive and re-check open operator tokens every few ticks."""
    desk, tick = state.desk, float(state.settings["webchat_tick"])
    rounds = 0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), timeout=tick)
        state.wake.clear()
        try:
            while await run_in_threadpool(desk.deliver):
                pass
            rounds += 1
            if rounds % 10 == 0:
                await run_in_threadpool(desk.run_due)
                await run_in_threadpool(desk.index_archive)
                await _recheck_tokens(state)
        except Exception:
            log.exception("webchat worker pass failed")


async def _recheck_tokens(state: AppState) -> None:
    """Close sockets whose token another process revoked."""
    hub = state.web.hub

    def revoked() -> list[str]:
        gone = []
        with state.desk.reading() as tx:
            for token_id, _ in list(hub.operators.values()):
                found = tx.find(WebToken, token_id)
                if found is None or found.revoked is not None:
                    gone.append(token_id)
        return gone

    gone = await run_in_threadpool(revoked)
    if gone:
        hub.close_tokens(gone)


def _static(name: str, media_type: str) -> Callable[[Request], Response]:
    content = resources.files("jivocore_webchat").joinpath("static", name).read_bytes()

    def serve(request: Request) -> Response:
        headers = {
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if media_type == "text/html":
            headers["Content-Security-Policy"] = (
                "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                "connect-src 'self' ws: wss:; img-src 'self' data:"
            )
        return Response(content, media_type=media_type, headers=headers)

    return serve


STATIC = {
    "/": ("console.html", "text/html"),
    "/console.js": ("console.js", "text/javascript"),
    "/console.css": ("console.css", "text/css"),
    "/widget.js": ("widget.js", "text/javascript"),
    "/demo": ("demo.html", "text/html"),
}


def make_app(
    desk: HelpDesk,
    web: WebChat | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    worker: bool = True,
) -> Starlette:
    """The web chat app on `desk`. `web` is the desk's web channel (found among the desk's
    channels when not given). With `worker`, the app's lifespan runs the outbox, the scheduler
    and the archive indexer."""
    if web is None:
        found = [c for c in desk.channels.values() if isinstance(c, WebChat)]
        if not found:
            raise ValidationError("the desk has no WebChat channel: HelpDesk(plugins=[WebChat()])")
        web = found[0]
    web.desk = desk
    state = AppState(desk, web, {**desk.settings, **(settings or {})})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        web.hub.loop = asyncio.get_running_loop()
        state.wake = asyncio.Event()
        task = asyncio.ensure_future(_worker(state)) if worker else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def jivo_error(request: Request, exc: Exception) -> Response:
        status = status_of(exc)
        if status == 500:
            log.exception("unexpected error", exc_info=exc)
            return error(500, "InternalError", "something went wrong on the server")
        return error(status, type(exc).__name__, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        return error(exc.status_code, "HTTPError", str(exc.detail), **headers)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi())

    routes: list[Route | WebSocketRoute] = [_route(state, e) for e in ENDPOINTS]
    routes.append(Route("/openapi.json", openapi_json, methods=["GET"]))
    for path, (name, media_type) in STATIC.items():
        routes.append(Route(path, _static(name, media_type), methods=["GET"]))
    routes.append(WebSocketRoute("/api/visitor/ws", visitor_socket))
    routes.append(WebSocketRoute("/api/operator/ws", operator_socket))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            JivoError: jivo_error,
            Exception: jivo_error,
        },
    )
    app.state.webchat = state
    return app
