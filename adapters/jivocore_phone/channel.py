"""PhoneChannel: call events and texts by signed HTTP webhook in; texts out by HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import attrs

from jivocore import (
    Channel,
    ConflictError,
    Conversation,
    HelpDesk,
    JivoError,
    Outbound,
    Range,
    State,
    Undeliverable,
    ValidationError,
    Work,
    hookimpl,
    new_id,
)

from .entities import Call, PhoneWebhook

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

EVENTS = ("ringing", "answered", "ended", "missed", "sms")
MAX_BODY = 64 * 1024
_PHONE = re.compile(r"\+?[0-9]{3,20}")


class SignatureError(JivoError):
    """The request is not signed with the shared secret, or not recently."""

    http_status = 401


class Replay(JivoError):
    """The very same signed request was taken before."""

    http_status = 409


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature a request carries: ``sha256=`` HMAC-SHA256 over ``timestamp.body``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class PhoneChannel:
    """The phone channel: a plugin that registers itself.

    :param secret: the key the phone system signs webhooks with (and the desk signs texts).
    :param name: the channel's name (``"phone"``).
    :param listen_host, listen_port: where `start` serves the webhook (port 0: any free port,
        read ``channel.port``); ``listen_host=None`` serves nothing: mount `wsgi_app` instead.
    :param outbound_url: the provider's endpoint for texts to clients; None: replies are
        undeliverable on this channel.
    :param window: seconds a request's timestamp may differ from the desk's clock.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        name: str = "phone",
        listen_host: str | None = "127.0.0.1",
        listen_port: int = 8026,
        outbound_url: str | None = None,
        window: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        if not secret:
            raise ValidationError("the phone channel needs a secret to check signatures")
        self.name = name
        self.__name__ = f"jivocore_phone:{name}"  # the plugin's name: one per channel
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.listen_host, self.listen_port = listen_host, listen_port
        self.outbound_url = outbound_url
        self.window = window
        self.timeout = timeout
        self._desk: HelpDesk | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._gate = threading.Condition()
        self._in_flight = 0

    @hookimpl
    def jivocore_register_channels(self, register: Callable[[Channel], None]) -> None:
        register(self)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the phone channel is not serving")
        return int(self._server.server_address[1])

    # --- start and stop ------------------------------------------------------------------------

    def start(self, desk: HelpDesk) -> None:
        if "phone_calls" not in desk.entity_types:
            raise RuntimeError(
                "the jivocore_phone plugin is not registered (it stores the calls): pass the "
                "jivocore_phone module in plugins, or open the desk with the installed plugins"
            )
        with self._gate:
            self._desk = desk
        if self.listen_host is not None and self._server is None:
            server = make_server(
                self.listen_host,
                self.listen_port,
                self.wsgi_app,
                server_class=_ThreadingServer,
                handler_class=_QuietHandler,
            )
            self._thread = threading.Thread(
                target=server.serve_forever, args=(0.05,), name="jivocore-phone", daemon=True
            )
            self._thread.start()
            self._server = server

    def stop(self) -> None:
        """Answer 503 to new requests, finish the ones in flight, close the server."""
        with self._gate:
            self._desk = None
            self._gate.wait_for(lambda: self._in_flight == 0, timeout=30)
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(10)

    # --- inbound -------------------------------------------------------------------------------

    def wsgi_app(
        self, environ: Mapping[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """The webhook as a WSGI application: mount it in the host's server, or let `start`
        serve it."""
        with self._gate:
            desk = self._desk
            if desk is not None:
                self._in_flight += 1
        if desk is None:
            return _answer(start_response, "503 Service Unavailable", {"error": "not started"})
        try:
            status, body = self._handle(desk, environ)
        finally:
            with self._gate:
                self._in_flight -= 1
                self._gate.notify_all()
        return _answer(start_response, status, body)

    def _handle(self, desk: HelpDesk, environ: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if environ.get("REQUEST_METHOD") != "POST":
            return "405 Method Not Allowed", {"error": "webhooks are POSTed"}
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return "413 Content Too Large", {"error": f"a body of 1 to {MAX_BODY} bytes"}
        body = environ["wsgi.input"].read(length)
        try:
            signature = self._verify(desk, environ, body)
            event = _event(body)
            with desk.reading() as tx:
                seen = tx.select(
                    PhoneWebhook, {"channel": self.name, "signature": signature}, limit=1
                )
                if next(seen, None) is not None:
                    raise Replay("this request was taken before", signature=signature)
            result = self._apply(desk, event, signature)
        except JivoError as exc:
            status = HTTPStatus(exc.http_status)
            return f"{status.value} {status.phrase}", {
                "error": type(exc).__name__,
                "message": exc.message,
            }
        return "200 OK", result

    def _verify(self, desk: HelpDesk, environ: Mapping[str, Any], body: bytes) -> str:
        timestamp = str(environ.get("HTTP_X_JIVOCORE_TIMESTAMP", ""))
        given = str(environ.get("HTTP_X_JIVOCORE_SIGNATURE", ""))
        if not timestamp or not given:
            raise SignatureError("X-Jivocore-Timestamp and X-Jivocore-Signature are required")
        if not hmac.compare_digest(sign(self.secret, timestamp, body), given):
            raise SignatureError("the signature does not match the body and timestamp")
        try:
            age = desk.clock.now().timestamp() - float(timestamp)
        except ValueError:
            raise SignatureError("X-Jivocore-Timestamp is not a Unix time") from None
        if abs(age) > self.window:
            raise SignatureError(
                f"the request's timestamp is {age:.0f} s off the desk's clock "
                f"(at most {self.window:.0f} s)"
            )
        return given

    def _apply(self, desk: HelpDesk, event: dict[str, Any], signature: str) -> dict[str, Any]:
        kind, phone = event["event"], event["phone"]
        if kind == "sms":
            message = desk.receive(
                self.name, phone, event["text"], message_id=f"sms:{event['id']}", kind="chat"
            )
            self._remember(desk, signature, kind)
            return {"conversation_id": message.conversation_id, "message_id": message.id}
        call_id = event["call_id"]
        call = self._call(desk, call_id) or self._ring(desk, event)
        if kind == "answered":
            operator_id = event["operator_id"]
            conversation = desk.conversation(call.conversation_id)
            if not (conversation.state is State.ACTIVE and conversation.owner_id == operator_id):
                desk.accept(call.conversation_id, operator_id)
            call = attrs.evolve(call, state="answered", operator_id=operator_id)
        elif kind == "ended" and call.operator_id is not None:
            conversation = desk.conversation(call.conversation_id)
            if conversation.state is State.ACTIVE:
                desk.close(call.conversation_id, conversation.owner_id or call.operator_id)
            call = attrs.evolve(
                call,
                state="ended",
                duration=event.get("duration"),
                recording_url=event.get("recording_url"),
            )
        elif kind in ("missed", "ended"):  # ended before anyone answered: missed
            desk.receive(
                self.name,
                phone,
                f"Missed call from {phone}: please call back",
                message_id=f"call:{call_id}:missed",
                kind="call",
            )
            call = attrs.evolve(call, state="missed")
        saved = self._save(desk, call, kind, signature)
        return {
            "conversation_id": saved.conversation_id,
            "call": {"call_id": saved.call_id, "state": saved.state},
        }

    def _call(self, desk: HelpDesk, call_id: str) -> Call | None:
        with desk.reading() as tx:
            found = tx.select(Call, {"channel": self.name, "call_id": call_id}, limit=1)
            return next(found, None)

    def _ring(self, desk: HelpDesk, event: dict[str, Any]) -> Call:
        phone, direction = event["phone"], event["direction"]
        text = f"Call from {phone}" if direction == "inbound" else f"Call to {phone}"
        message = desk.receive(
            self.name, phone, text, message_id=f"call:{event['call_id']}:ringing", kind="call"
        )
        return Call(
            id="",
            channel=self.name,
            call_id=event["call_id"],
            conversation_id=message.conversation_id,
            phone=phone,
            direction=direction,
            started=message.at,
        )

    def _save(self, desk: HelpDesk, call: Call, event: str, signature: str) -> Call:
        def change(work: Work) -> Call:
            stored = next(
                work.tx.select(Call, {"channel": self.name, "call_id": call.call_id}, limit=1),
                None,
            )
            times: dict[str, Any] = {}
            if call.state == "answered":
                times["answered"] = work.now
            elif call.state == "ended":
                times["ended"] = work.now
            if stored is None:
                saved = work.tx.add(attrs.evolve(call, id=new_id(work.now), **times))
            elif stored.state == "ended":
                saved = stored  # the call is over: a late event changes nothing
            else:
                changes = {
                    f: getattr(call, f)
                    for f in ("state", "operator_id", "duration", "recording_url")
                    if getattr(call, f) is not None
                }
                saved = work.tx.update(attrs.evolve(stored, **changes, **times))
            self._remember_in(work, signature, event)
            conversation = work.tx.get(Conversation, saved.conversation_id)
            work.record(
                f"call_{saved.state}",
                conversation=conversation,
                call_id=saved.call_id,
                duration=saved.duration,
            )
            return saved

        return desk.run(change)

    def _remember(self, desk: HelpDesk, signature: str, event: str) -> None:
        desk.run(lambda work: self._remember_in(work, signature, event))

    def _remember_in(self, work: Work, signature: str, event: str) -> None:
        """Keep the request's signature, so the same request again is a replay; forget those
        too old to pass the timestamp check anyway."""
        horizon = work.now - timedelta(seconds=2 * self.window)
        for old in list(work.tx.select(PhoneWebhook, {"at": Range(lt=horizon)}, limit=20)):
            work.tx.delete(old)
        try:
            work.tx.add(
                PhoneWebhook(
                    id=new_id(work.now),
                    channel=self.name,
                    signature=signature,
                    event=event,
                    at=work.now,
                )
            )
        except ConflictError:
            raise Replay("this request was taken before", signature=signature) from None

    # --- outbound ------------------------------------------------------------------------------

    def send(self, outbound: Outbound) -> str | None:
        if self.outbound_url is None:
            raise Undeliverable("the phone channel has no outbound_url to send texts through")
        phone = outbound.identity.external_id if outbound.identity else ""
        if not _PHONE.fullmatch(phone):
            raise Undeliverable(f"{phone!r} is not a phone number")
        body = json.dumps(
            {"to": phone, "text": outbound.message.text, "message_id": outbound.message.id}
        ).encode()
        now = self._desk.clock.now() if self._desk is not None else outbound.message.at
        timestamp = str(int(now.timestamp()))
        request = urllib.request.Request(
            self.outbound_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Jivocore-Timestamp": timestamp,
                "X-Jivocore-Signature": sign(self.secret, timestamp, body),
                "Idempotency-Key": outbound.message.id,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):
                raise Undeliverable(f"the provider refused the text: HTTP {exc.code}") from exc
            raise
        try:
            sent_id = json.loads(answer).get("id")
        except (ValueError, AttributeError):
            return None
        return str(sent_id) if sent_id is not None else None


def _event(body: bytes) -> dict[str, Any]:
    """The webhook's JSON, checked field by field."""
    try:
        event = json.loads(body)
    except ValueError:
        raise ValidationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise ValidationError("the body is a JSON object")
    kind = event.get("event")
    if kind not in EVENTS:
        raise ValidationError(f"event is one of {', '.join(EVENTS)}, not {kind!r}", field="event")
    phone = re.sub(r"[\s().\-]", "", str(event.get("phone", "")))
    if not _PHONE.fullmatch(phone):
        raise ValidationError(f"phone {event.get('phone')!r} is not a number", field="phone")
    event["phone"] = phone
    required = {"sms": ("id", "text"), "answered": ("call_id", "operator_id")}.get(
        kind, ("call_id",)
    )
    for field in required:
        if not isinstance(event.get(field), str) or not event[field]:
            raise ValidationError(f"{field} is a non-empty string", field=field)
    direction = event.setdefault("direction", "inbound")
    if direction not in ("inbound", "outbound"):
        raise ValidationError("direction is inbound or outbound", field="direction")
    duration = event.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0
    ):
        raise ValidationError("duration is a number of seconds", field="duration")
    url = event.get("recording_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        raise ValidationError("recording_url is an http(s) URL", field="recording_url")
    return event


def _answer(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
