"""The ASGI app (Starlette): the visitor widget and its WebSocket, the operator console, the
HTTP API the console uses and its OpenAPI document. `make_app(desk, web)` builds one; a host
mounts it (``Mount("/help", app=make_app(desk, web))``) or `jivocore serve` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import jivocore_crm
import jivocore_deals
import jivocore_tags
import jivocore_tasks
from jivocore import (
    Client,
    ClientIdentity,
    ConfigurationError,
    Conversation,
    ConversationStatistics,
    HelpDesk,
    In,
    JivoError,
    NotFoundError,
    Operator,
    Outcome,
    PermissionDenied,
    Presence,
    Role,
    State,
    ValidationError,
    new_id,
)

from . import auth
from .auth import Unauthorized, WebToken
from .channel import Payload, WebChat, message_payload
from .schemas import BOOLEAN, INTEGER, STRING, Schema, array, components, nullable, obj, ref
from .transfer import Download, TooLarge, receive_file, stream

try:  # the CSV plugin needs the csv extra (phonenumbers): without it, import/export answer 501
    import jivocore_csv
except ImportError:  # pragma: no cover - the dev extra installs it
    jivocore_csv = None

log = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = {
    "webchat_max_message_bytes": 16 * 1024,  # HTTP body or WebSocket frame: 413 / close 1009
    "webchat_rate_burst": 10,  # messages a visitor may send at once
    "webchat_rate_per_second": 1.0,  # and then this many a second
    "webchat_tick": 0.2,  # seconds between outbox passes
    "webchat_max_upload_bytes": 200 * 1024 * 1024,  # a CSV file to import
    "webchat_login_failures": 5,  # wrong passwords for one login name at once
    "webchat_login_every": 30.0,  # and then one every this many seconds
}


class TooManyAttempts(JivoError):
    """Too many wrong passwords for this login name: `retry_after` seconds to wait."""

    http_status = 429
    retry_after: int  # set from the details it is raised with


class Unavailable(ConfigurationError):
    """What the request needs is not installed."""

    http_status = 501


class BadRequest(JivoError):
    """The body is not a JSON object."""

    http_status = 400


class PayloadTooLarge(JivoError):
    """The body is over the size limit."""

    http_status = 413


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
    return exc.http_status if isinstance(exc, JivoError) else 500


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

    def wait(self, key: str) -> float:
        """Seconds until `take` would let the key through (0: now); takes nothing."""
        tokens, then = self.buckets.get(key, (float(self.burst), self.clock()))
        tokens = min(float(self.burst), tokens + (self.clock() - then) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

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


def _strings(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


@attrs.frozen
class Field:
    """A query parameter or a property of a JSON body. Strings never hold NUL (the storage
    refuses it); a required string is not blank."""

    name: str
    type: str = "string"  # JSON schema type: string, integer or boolean
    required: bool = False
    choices: tuple[str, ...] = attrs.field(default=(), converter=_strings)  # when they are few
    min_length: int = 0
    max_length: int | None = None
    pattern: str | None = None  # a regular expression the whole string matches
    format: str | None = None  # "date-time": ISO 8601, given to the handler as a UTC datetime


@attrs.frozen
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Callable[[Call], Any]
    returns: Schema  # the JSON schema of a 200 answer
    body: tuple[Field, ...] = ()
    query: tuple[Field, ...] = ()
    auth: str = "operator"  # operator | visitor | none
    tag: str = "console"
    upload: str | None = None  # the media type of a file body (streamed to a temporary file)
    rate_limited: bool = False  # 429 with Retry-After


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
    upload: str | None = None  # the path of the uploaded file

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
        # Wrong passwords spend a login name's tokens: guessing is slowed, logging in is not.
        self.logins = RateLimit(
            int(self.settings["webchat_login_failures"]),
            1 / float(self.settings["webchat_login_every"]),
        )
        self.max_bytes = int(self.settings["webchat_max_message_bytes"])
        self.max_upload = int(self.settings["webchat_max_upload_bytes"])
        self.wake = asyncio.Event()
        # Uploads while they are imported, and the rejected rows of the last imports.
        self.files = tempfile.TemporaryDirectory(prefix="jivocore-webchat-")
        self.rejected: dict[str, tuple[str, str]] = {}  # import id -> (operator id, path)
        self.lock = threading.Lock()

    def keep_rejected(self, import_id: str, operator_id: str, path: str) -> None:
        with self.lock:
            self.rejected[import_id] = (operator_id, path)
            while len(self.rejected) > REJECTED_KEPT:
                _, oldest = self.rejected.pop(next(iter(self.rejected)))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(oldest)

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
        # The last message only: seqs run 1..message_count.
        "preview": next(
            (
                m.text
                for m in desk.messages(conversation.id, after_seq=conversation.message_count - 1)
            ),
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
    name = call.body["login"].strip().lower()
    wait = call.state.logins.wait(name)
    if wait:
        seconds = math.ceil(wait)
        raise TooManyAttempts(
            f"too many wrong passwords for {name!r}; try again in {seconds} s",
            retry_after=seconds,
        )
    try:
        token, saved = auth.log_in(call.desk, call.body["login"], call.body["password"])
    except Unauthorized:
        call.state.logins.take(name)
        raise
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
        **_paging(q),
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


def task(call: Call) -> Any:
    due = call.body.get("due") or call.desk.clock.now() + timedelta(days=1)
    saved = jivocore_tasks.task_from_conversation(
        call.desk, call.params["conversation_id"], call.me.id, _text(call, "title"), due
    )
    return _json(call.desk, saved)


def deal(call: Call) -> Any:
    saved = jivocore_deals.deal_from_conversation(
        call.desk,
        call.params["conversation_id"],
        call.me.id,
        _text(call, "title"),
        amount=call.body.get("amount") or "0",
    )
    return _json(call.desk, saved)


def block(call: Call) -> Any:
    return _json(call.desk, call.desk.block(call.params["client_id"], call.me.id))


def _client_filter(q: Mapping[str, Any]) -> jivocore_crm.ClientFilter:
    return jivocore_crm.ClientFilter(
        responsible_id=q.get("responsible_id") or None,
        statuses=[q["status"]] if q.get("status") else (),
        tags=[q["tag"]] if q.get("tag") else (),
        text=q.get("text") or "",
    )


def clients(call: Call) -> Any:
    q = call.query
    listing = jivocore_crm.find_clients(
        call.desk,
        call.me.id,
        _client_filter(q),
        **_paging(q),
    )
    items = [_json(call.desk, c) for c in listing.items]
    return _page(items, listing)


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


def _paging(q: Mapping[str, Any]) -> dict[str, Any]:
    """A listing's `after` (the previous page's `next`) and `limit` from the query string."""
    return {"after": q.get("after") or None, "limit": int(q.get("limit") or 50)}


def _page(items: list[Any], listing: Any) -> dict[str, Any]:
    """A CRM listing's page: `count` is a floor when `exact` is false (counting stopped)."""
    return {"items": items, "next": listing.next, "count": listing.count, "exact": listing.exact}


def _with_client_names(call: Call, items: Any) -> list[dict[str, Any]]:
    """Deals or tasks, each with its client's name (the listings keep to clients I see)."""
    ids = sorted({item.client_id for item in items})
    with call.desk.reading() as tx:
        names = {c.id: c.name for c in tx.select(Client, {"id": In(ids)})} if ids else {}
    return [
        {**_json(call.desk, item), "client_name": names.get(item.client_id, "")} for item in items
    ]


def deals(call: Call) -> Any:
    q = call.query
    listing = jivocore_deals.find_deals(
        call.desk,
        call.me.id,
        client_id=q.get("client_id") or None,
        status=q.get("status") or None,
        stages=[q["stage"]] if q.get("stage") else (),
        responsible_id=q.get("responsible_id") or None,
        **_paging(q),
    )
    items = _with_client_names(call, listing.items)
    return _page(items, listing)


def stages(call: Call) -> Any:
    return list(jivocore_deals.pipeline(call.desk))


TASK_STATES = {"open": False, "done": True, "any": None}


def tasks(call: Call) -> Any:
    q = call.query
    listing = jivocore_tasks.find_tasks(
        call.desk,
        call.me.id,
        client_id=q.get("client_id") or None,
        assignee_id=q.get("assignee_id") or None,
        done=TASK_STATES[q.get("state") or "open"],
        due=q.get("due") or None,
        **_paging(q),
    )
    items = _with_client_names(call, listing.items)
    return _page(items, listing)


def today(call: Call) -> Any:
    work = jivocore_crm.today(call.desk, call.me.id)
    late = jivocore_tasks.overdue(call.desk, call.me.id)
    overdue = {t.id for t in late.items}
    return {
        "tasks": [
            {**t, "overdue": t["id"] in overdue} for t in _with_client_names(call, work.tasks)
        ],
        "deals": _with_client_names(call, work.deals),
        "clients": [_json(call.desk, c) for c in work.clients],
        "overdue": late.count,
    }


# --- CSV import and export (jivocore_csv) -------------------------------------------------------

DELIMITERS = {",": ",", ";": ";", "|": "|", "tab": "\t"}
ENCODINGS = ("utf-8-sig", "utf-8", "utf-16")  # those jivocore_csv exports
ERRORS_SHOWN = 1000  # rejected rows listed in an import's answer; all are in its rejected file
REJECTED_KEPT = 20  # rejected-rows files kept for download, the newest


def _csv() -> Any:
    if jivocore_csv is None:
        raise Unavailable("CSV import and export need the csv extra: pip install 'jivocore[csv]'")
    return jivocore_csv


def import_clients(call: Call) -> Any:
    csv = _csv()
    if not jivocore_crm.sees_all(call.me):
        raise PermissionDenied(
            "an import may update any client it matches: only operators who see every client "
            "(managers, admins) import",
            operator_id=call.me.id,
        )
    assert call.upload is not None
    q = call.query
    import_id = new_id(call.desk.clock.now())
    rejected = os.path.join(call.state.files.name, f"{import_id}.rejected.csv")
    try:
        report = csv.import_clients(
            call.desk,
            call.upload,
            dry_run=bool(q.get("dry_run")),
            encoding=q.get("encoding") or None,
            delimiter=DELIMITERS.get(q.get("delimiter") or ""),
            region=q.get("region") or None,
            duplicates=q.get("duplicates") or None,
            rejected=rejected,
        )
    except ConfigurationError as exc:  # a bad option of this request, not of the desk
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rejected)
        raise ValidationError(str(exc)) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rejected)
        raise
    if report.rejected:
        call.state.keep_rejected(import_id, call.me.id, rejected)
    else:
        os.unlink(rejected)
    return {
        "dry_run": report.dry_run,
        "summary": report.summary(),
        "format": attrs.asdict(report.format) if report.format else None,
        **{
            name: getattr(report, name)
            for name in ("rows", "created", "updated", "unchanged", "merged", "rejected", "indexed")
        },
        "errors": [attrs.asdict(e) for e in report.errors[:ERRORS_SHOWN]],
        "rejected_file": f"api/clients/import/{import_id}/rejected" if report.rejected else None,
    }


def rejected_rows(call: Call) -> Any:
    owner, path = call.state.rejected.get(call.params["import_id"], ("", ""))
    if owner != call.me.id or not os.path.exists(path):
        raise NotFoundError("no rejected rows of yours by that id; import the file again")
    return FileResponse(path, media_type="text/csv; charset=utf-8", filename="rejected.csv")


def export_clients(call: Call) -> Any:
    csv = _csv()
    q = call.query
    encoding = q.get("encoding") or "utf-8-sig"
    filter = _client_filter(q)

    def write(out: Any) -> None:
        csv.export_clients(
            call.desk,
            out,
            call.me.id,
            filter,
            delimiter=DELIMITERS[q.get("delimiter") or ","],
            encoding=encoding,
        )

    charset = "utf-16" if encoding == "utf-16" else "utf-8"
    return Download("clients.csv", f"text/csv; charset={charset}", write)


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


S, INT, BOOL = "string", "integer", "boolean"
AMOUNT = r"[0-9]{1,15}(\.[0-9]{1,4})?"
LIMIT = Field("limit", INT)
CURSOR = Field("after")

MESSAGE = obj(
    {
        "type": {"type": "string", "enum": ["message"]},
        "id": STRING,
        "conversation_id": STRING,
        "seq": INTEGER,
        "author": STRING,
        "name": STRING,
        "text": STRING,
        "at": {"type": "string", "format": "date-time"},
    }
)
VIEW_PARTS = {"conversation": ref(Conversation), "client": ref(Client), "preview": STRING}
VIEW = obj(VIEW_PARTS)
STATISTICS = ref(ConversationStatistics)
OK = obj({"ok": BOOLEAN})


def with_client_name(cls: type[Any], **more: Schema) -> Schema:
    return {"allOf": [ref(cls), obj({"client_name": STRING, **more})]}


def listing(items: Schema) -> Schema:
    return obj(
        {"items": array(items), "next": nullable(STRING), "count": INTEGER, "exact": BOOLEAN}
    )


DEAL = with_client_name(jivocore_deals.Deal)
TASK = with_client_name(jivocore_tasks.Task)
IMPORT_REPORT = obj(
    {
        "dry_run": BOOLEAN,
        "summary": STRING,
        "format": nullable(obj({"encoding": STRING, "delimiter": STRING})),
        **dict.fromkeys(
            ("rows", "created", "updated", "unchanged", "merged", "rejected", "indexed"), INTEGER
        ),
        "errors": array(
            obj({"record": INTEGER, "line": INTEGER, "column": STRING, "reason": STRING})
        ),
        "rejected_file": nullable(STRING),
    }
)
CSV_FILE: Schema = {"type": "string", "format": "binary"}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/api/login",
        "Log in: a bearer token for the console; the operator goes online",
        login,
        obj({"token": STRING, "operator": ref(Operator)}),
        body=(Field("login", S, True), Field("password", S, True)),
        auth="none",
    ),
    Endpoint("POST", "/api/logout", "Revoke this token (its WebSockets close)", logout, OK),
    Endpoint("GET", "/api/me", "The operator this token belongs to", me, ref(Operator)),
    Endpoint("GET", "/api/operators", "Every operator, by name", operators, array(ref(Operator))),
    Endpoint(
        "POST",
        "/api/operators",
        "Add an operator with a console login (admins)",
        add_operator,
        ref(Operator),
        body=(
            Field("name", S, True),
            Field("login", S, True),
            Field("password", S, True, min_length=8),
            Field("role", S, choices=tuple(Role)),
        ),
    ),
    Endpoint(
        "POST",
        "/api/operators/{operator_id}/revoke",
        "Revoke every token of an operator (their own, or anyone's for admins)",
        revoke,
        obj({"revoked": INTEGER}),
    ),
    Endpoint(
        "POST",
        "/api/presence",
        "Set my presence: online, away, offline",
        presence,
        ref(Operator),
        body=(Field("presence", S, True, choices=tuple(Presence)),),
    ),
    Endpoint("GET", "/api/inbox", "Inbox: waiting, less those I ignored", inbox, array(VIEW)),
    Endpoint("GET", "/api/chats", "Chats: my active conversations", chats, array(VIEW)),
    Endpoint(
        "GET",
        "/api/archive",
        "All: closed conversations I may see, with statistics; search and filters",
        archive,
        obj(
            {
                "items": array(obj({**VIEW_PARTS, "statistics": STATISTICS})),
                "next": nullable(STRING),
            }
        ),
        query=(
            Field("text"),
            Field("outcome", choices=tuple(Outcome)),
            Field("channel"),
            Field("tag"),
            CURSOR,
            LIMIT,
        ),
    ),
    Endpoint(
        "GET",
        "/api/conversations/{conversation_id}",
        "A conversation with its client, messages and statistics (once accepted)",
        conversation,
        obj({**VIEW_PARTS, "messages": array(MESSAGE)}, {"statistics": STATISTICS}),
    ),
    *(
        Endpoint(
            "POST",
            f"/api/conversations/{{conversation_id}}/{name}",
            f"{name.capitalize()} the conversation",
            _command(name),
            ref(Conversation),
        )
        for name in ("accept", "ignore", "close", "join", "leave")
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/reply",
        "Reply to the client",
        reply,
        MESSAGE,
        body=(Field("text", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/transfer",
        "Transfer to an online colleague",
        transfer,
        ref(Conversation),
        body=(Field("operator_id", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/invite",
        "Invite an online colleague",
        invite,
        ref(Conversation),
        body=(Field("operator_id", S, True),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/tags",
        "Add a tag to the conversation and its client",
        tag,
        ref(Conversation),
        body=(Field("name", S, True, max_length=64),),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/tasks",
        "Create a task on the conversation's client",
        task,
        ref(jivocore_tasks.Task),
        body=(Field("title", S, True), Field("due", S, format="date-time")),
    ),
    Endpoint(
        "POST",
        "/api/conversations/{conversation_id}/deals",
        "Create a deal on the conversation's client",
        deal,
        ref(jivocore_deals.Deal),
        body=(Field("title", S, True), Field("amount", S, pattern=AMOUNT)),
    ),
    Endpoint(
        "GET",
        "/api/clients",
        "CRM: clients I may see, filtered",
        clients,
        listing(ref(Client)),
        query=(
            Field("responsible_id"),
            Field("status"),
            Field("tag"),
            Field("text"),
            CURSOR,
            LIMIT,
        ),
        tag="crm",
    ),
    Endpoint(
        "POST",
        "/api/clients",
        "CRM: add a client",
        add_client,
        ref(Client),
        body=(Field("name", S, True), Field("email"), Field("phone"), Field("status")),
        tag="crm",
    ),
    Endpoint("GET", "/api/statuses", "CRM: client statuses", statuses, array(STRING), tag="crm"),
    Endpoint(
        "POST",
        "/api/clients/import",
        "CRM: import clients from a CSV file (the body); with dry_run, the plan only. Managers "
        "and admins",
        import_clients,
        IMPORT_REPORT,
        query=(
            Field("dry_run", BOOL),
            Field("encoding"),
            Field("delimiter", choices=tuple(DELIMITERS)),
            Field("region"),
            Field("duplicates", choices=("merge", "report")),
        ),
        upload="text/csv",
        tag="crm",
    ),
    Endpoint(
        "GET",
        "/api/clients/import/{import_id}/rejected",
        "CRM: an import's rejected rows as CSV, with an error column",
        rejected_rows,
        CSV_FILE,
        tag="crm",
    ),
    Endpoint(
        "GET",
        "/api/clients/export",
        "CRM: the clients I may see, filtered, as CSV (streamed)",
        export_clients,
        CSV_FILE,
        query=(
            Field("responsible_id"),
            Field("status"),
            Field("tag"),
            Field("text"),
            Field("delimiter", choices=tuple(DELIMITERS)),
            Field("encoding", choices=ENCODINGS),
        ),
        tag="crm",
    ),
    Endpoint(
        "GET",
        "/api/clients/{client_id}",
        "CRM: a client with their tasks and deals",
        client,
        obj(
            {
                "client": ref(Client),
                "tasks": array(ref(jivocore_tasks.Task)),
                "deals": array(ref(jivocore_deals.Deal)),
            }
        ),
        tag="crm",
    ),
    Endpoint(
        "POST",
        "/api/clients/{client_id}/block",
        "Block the client (closes their open conversations)",
        block,
        ref(Client),
        tag="crm",
    ),
    Endpoint(
        "GET",
        "/api/deals",
        "CRM: deals of clients I may see, filtered",
        deals,
        listing(DEAL),
        query=(
            Field("status", choices=tuple(jivocore_deals.DealStatus)),
            Field("stage"),
            Field("responsible_id"),
            Field("client_id"),
            CURSOR,
            LIMIT,
        ),
        tag="crm",
    ),
    Endpoint("GET", "/api/stages", "CRM: deal pipeline stages", stages, array(STRING), tag="crm"),
    Endpoint(
        "GET",
        "/api/tasks",
        "CRM: tasks of clients I may see, filtered",
        tasks,
        listing(TASK),
        query=(
            Field("state", choices=tuple(TASK_STATES)),
            Field("due", choices=("today", "overdue")),
            Field("assignee_id"),
            Field("client_id"),
            CURSOR,
            LIMIT,
        ),
        tag="crm",
    ),
    Endpoint(
        "GET",
        "/api/today",
        "CRM: my day: tasks due today or overdue, deals needing action, newly assigned clients",
        today,
        obj(
            {
                "tasks": array(with_client_name(jivocore_tasks.Task, overdue=BOOLEAN)),
                "deals": array(DEAL),
                "clients": array(ref(Client)),
                "overdue": INTEGER,
            }
        ),
        tag="crm",
    ),
    Endpoint(
        "POST",
        "/api/visitor/session",
        "A new visitor id and its signed token",
        visitor_session,
        obj({"visitor_id": STRING, "token": STRING}),
        auth="none",
        tag="visitor",
    ),
    Endpoint(
        "GET",
        "/api/visitor/messages",
        "The visitor's conversation after a sequence number",
        visitor_messages,
        obj({"conversation_id": nullable(STRING), "messages": array(MESSAGE)}),
        query=(Field("conversation_id"), Field("after", INT)),
        auth="visitor",
        tag="visitor",
    ),
    Endpoint(
        "POST",
        "/api/visitor/messages",
        "The visitor writes (rate-limited: 429 with Retry-After)",
        visitor_send,
        MESSAGE,
        body=(Field("text", S, True), Field("id"), Field("name")),
        auth="visitor",
        tag="visitor",
        rate_limited=True,
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
        media = "text/csv" if e.returns is CSV_FILE else "application/json"
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__ + "_" + e.method.lower(),
            "tags": [e.tag],
            "responses": {
                "200": {"description": "OK", "content": {media: {"schema": e.returns}}},
                "default": {
                    "description": "An error",
                    "content": {"application/json": {"schema": error_ref}},
                },
            },
        }
        if e.rate_limited or e.handler is login:
            op["responses"]["429"] = {
                "description": "Too many messages (or wrong passwords): wait Retry-After seconds",
                "headers": {"Retry-After": {"required": True, "schema": INTEGER}},
                "content": {"application/json": {"schema": error_ref}},
            }
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _path_params(e.path)
        ]
        params += [
            {"name": f.name, "in": "query", "required": f.required, "schema": _field_schema(f)}
            for f in e.query
        ]
        if params:
            op["parameters"] = params
        if e.upload:
            op["requestBody"] = {"required": True, "content": {e.upload: {"schema": CSV_FILE}}}
        elif e.body:
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
                "responses": {
                    "101": {"description": "Switching protocols"},
                    "426": {
                        "description": "A plain HTTP request: connect with a WebSocket",
                        "content": {"application/json": {"schema": error_ref}},
                    },
                },
            }
        }
    error = obj({"error": STRING, "message": STRING, "status": INTEGER})
    return {
        "openapi": "3.1.0",
        "info": {"title": "jivocore web chat", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer"},
                "visitor": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {"Error": error, **components(paths)},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


# Python's whitespace (str.strip), spelled out: JSON Schema's \s is ECMAScript's, which differs.
SPACE = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NO_NUL = "^[^\\u0000]*$"
NOT_BLANK = f"^[^\\u0000]*[^\\u0000{SPACE}][^\\u0000]*$"


def _field_schema(f: Field) -> Schema:
    schema: Schema = {"type": f.type}
    if f.choices:
        schema["enum"] = list(f.choices)
    elif f.type == "integer":
        schema.update(minimum=0, maximum=MAX_INTEGER)
    elif f.format:
        schema["format"] = f.format
    elif f.pattern:
        schema["pattern"] = f"^{f.pattern}$"
    elif f.type == "string":
        schema["pattern"] = NOT_BLANK if f.required else NO_NUL
        if f.min_length:
            schema["minLength"] = f.min_length
        if f.max_length is not None:
            schema["maxLength"] = f.max_length
    return schema


def _schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _field_schema(f) for f in fields},
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
    }


# --- the app ----------------------------------------------------------------------------------

MAX_INTEGER = 10**9
BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def _instant(name: str, text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.upper())
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValidationError(
            f"{name} is an ISO 8601 date and time such as 2030-01-31T09:00:00Z, not {text!r}",
            field=name,
        ) from exc


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _check(fields: tuple[Field, ...], data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The values of `data` as `fields` say, or a ValidationError naming what is wrong."""
    names = {f.name for f in fields}
    unknown = sorted(name for name in data if name not in names)
    if unknown:
        takes = f"it takes {', '.join(sorted(names))}" if names else "it takes none"
        raise ValidationError(f"{where} has unknown {unknown[0]!r}; {takes}", field=unknown[0])
    out: dict[str, Any] = {}
    for f in fields:
        value = data.get(f.name)
        if value is None:
            if f.required or f.name in data:
                raise ValidationError(f"{where} needs a value for {f.name!r}", field=f.name)
            continue
        if f.type == "integer":
            try:
                value = int(value)
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"{f.name} must be an integer", field=f.name) from exc
            if value < 0 or value > MAX_INTEGER:
                raise ValidationError(f"{f.name} is out of range", field=f.name)
        elif f.type == "boolean":
            if not isinstance(value, bool):
                if str(value).lower() not in BOOLEANS:
                    raise ValidationError(f"{f.name} must be true or false", field=f.name)
                value = BOOLEANS[str(value).lower()]
        elif not isinstance(value, str):
            raise ValidationError(f"{f.name} must be a string", field=f.name)
        elif "\x00" in value:
            raise ValidationError(f"{f.name} contains a NUL character", field=f.name)
        elif f.choices and value not in f.choices:
            raise ValidationError(
                f"{f.name} is one of {', '.join(f.choices)}, not {value!r}", field=f.name
            )
        elif f.required and not value.strip():
            raise ValidationError(f"{f.name} must not be blank", field=f.name)
        elif len(value) < f.min_length:
            raise ValidationError(f"{f.name} has at least {f.min_length} characters", field=f.name)
        elif f.max_length is not None and len(value) > f.max_length:
            raise ValidationError(f"{f.name} has at most {f.max_length} characters", field=f.name)
        elif f.pattern and not re.fullmatch(f.pattern, value):
            raise ValidationError(f"{f.name} must match {f.pattern}, not {value!r}", field=f.name)
        elif f.format == "date-time":
            value = _instant(f.name, value)
        out[f.name] = value
    return out


async def _body(request: Request, e: Endpoint, state: AppState) -> dict[str, Any]:
    """The endpoint's JSON body, checked; a JivoError or an error response if it is not."""
    raw = await request.body()
    if len(raw) > state.max_bytes:
        raise PayloadTooLarge(f"the body exceeds {state.max_bytes} bytes")
    body: dict[str, Any] = {}
    if raw.strip():
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise BadRequest("the body is not JSON") from exc
        if not isinstance(parsed, dict):
            raise BadRequest("the body is not a JSON object")
        body = parsed
    return _check(e.body, body, "the body")


def _handler(state: AppState, e: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        query = _check(e.query, request.query_params, "the query")
        call = Call(state.desk, state.web, state, dict(request.path_params), {}, query)
        if e.auth == "operator":
            call.operator, call.token = await run_in_threadpool(
                auth.authenticate, state.desk, _bearer(request)
            )
        elif e.auth == "visitor":
            call.visitor_id = auth.visitor_of(state.secret, _bearer(request))
        if e.rate_limited:
            assert call.visitor_id is not None
            wait = state.limit.take(call.visitor_id)
            if wait:
                seconds = str(math.ceil(wait))
                return error(
                    429,
                    "TooManyRequests",
                    f"too many messages; try again in {seconds} s",
                    **{"Retry-After": seconds},
                )
        if e.upload:
            try:
                call.upload = await receive_file(request, state.files.name, state.max_upload)
            except TooLarge as exc:
                raise PayloadTooLarge(f"the file exceeds {state.max_upload} bytes") from exc
        elif e.method == "POST":
            call.body = await _body(request, e, state)
        try:
            result = await run_in_threadpool(e.handler, call)
        finally:
            if call.upload is not None:
                os.unlink(call.upload)
        if isinstance(result, Download):
            return StreamingResponse(
                await stream(result),
                media_type=result.media_type,
                headers={"Content-Disposition": f'attachment; filename="{result.filename}"'},
            )
        if isinstance(result, Response):
            return result
        return Json(result)

    return endpoint


def _routes(state: AppState) -> list[Route]:
    """One route per path, so a method it lacks is a 405 whose Allow header lists them all."""
    paths: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for e in ENDPOINTS:
        paths.setdefault(e.path, {})[e.method] = _handler(state, e)

    def route(path: str, handlers: dict[str, Callable[[Request], Awaitable[Response]]]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handlers["GET" if request.method == "HEAD" else request.method](request)

        return Route(path, endpoint, methods=list(handlers))

    routes = [route(path, handlers) for path, handlers in paths.items()]
    for path in SOCKETS:  # the same path over plain HTTP
        routes.append(Route(path, _upgrade_required, methods=["GET"]))
    return routes


async def _upgrade_required(request: Request) -> Response:
    return error(
        426,
        "UpgradeRequired",
        "this is a WebSocket: connect with ws:// or wss://",
        Upgrade="websocket",
    )


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
        # The widget refuses a message over the limit itself, rather than be closed with 1009.
        await ws.send_json({"type": "limits", "max_message_bytes": state.max_bytes})
        await ws.send_json(await run_in_threadpool(web.status, desk))
        found = await run_in_threadpool(_visitor_conversation, desk, web.name, visitor_id)
        sent = _Sent()
        if found is not None:
            after = 0
            if ws.query_params.get("conversation_id") == found.id:
                with contextlib.suppress(ValueError):
                    after = max(0, int(ws.query_params.get("after", "0")))
            sent.seen[found.id] = after
            history = await run_in_threadpool(desk.messages, found.id, after_seq=after)
            for message in history:
                sent.first_time(found.id, message.seq)
                await ws.send_json(message_payload(message, web.operator_name))
        pusher = asyncio.ensure_future(_push(ws, queue, sent))
        try:
            await _read_visitor(ws, state, visitor_id)
        finally:
            pusher.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        web.hub.remove_visitor(visitor_id, queue)


class _Sent:
    """The messages a visitor's socket has had, by sequence number: every one up to `seen`, and
    those past it in `ahead`. Not just the highest: a visitor's message is pushed as soon as it
    is stored, an operator's reply when the outbox delivers it, so a reply (seq 4) can come
    after the visitor's next message (seq 5), and must still be sent."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.ahead: dict[str, set[int]] = {}

    def first_time(self, conversation_id: str, seq: int) -> bool:
        seen = self.seen.get(conversation_id, 0)
        ahead = self.ahead.setdefault(conversation_id, set())
        if seq <= seen or seq in ahead:
            return False
        ahead.add(seq)
        while seen + 1 in ahead:  # sequence numbers have no gaps: keep the set small
            seen += 1
            ahead.discard(seen)
        self.seen[conversation_id] = seen
        return True


async def _push(ws: WebSocket, queue: asyncio.Queue[Payload | None], sent: _Sent) -> None:
    while True:
        payload = await queue.get()
        if payload is None:
            return
        if payload.get("type") == "message" and not sent.first_time(
            payload["conversation_id"], payload["seq"]
        ):
            continue  # the history (or another push) had it
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
        wait = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyAttempts) else {}
        return error(status, type(exc).__name__, str(exc), **wait)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        return error(exc.status_code, "HTTPError", str(exc.detail), **headers)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi())

    routes: list[Route | WebSocketRoute] = [*_routes(state)]
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
