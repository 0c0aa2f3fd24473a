"""jivocore_phone over real HTTP on loopback: signed call webhooks become conversations of kind
call (ringing -> inbox, answered -> accepted, ended -> closed, missed -> a callback request),
replays and bad signatures are refused with precise answers, texts go out to the provider."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jivocore import Channel, Conversation, DeliveryStatus, HelpDesk, Kind, Outcome, State
from jivocore.testing import FakeClock
from jivocore.testing.channels import ChannelContract
from jivocore_phone import Call, PhoneChannel, sign

SECRET = b"s3cret"


class Provider:
    """The phone provider's texting API: keeps what it is sent; 503 while `down`."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.down = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers["X-Jivocore-Timestamp"]
                ok = self.headers["X-Jivocore-Signature"] == sign(SECRET, timestamp, body)
                status = 503 if provider.down else 200 if ok else 401
                if status == 200:
                    provider.received.append(json.loads(body))
                answer = json.dumps({"id": f"sms-{len(provider.received)}"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/texts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def post(
    channel: PhoneChannel,
    event: dict[str, Any] | bytes,
    *,
    timestamp: str | None = None,
    signature: str | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    assert channel._desk is not None
    timestamp = timestamp or str(int(channel._desk.clock.now().timestamp()))
    headers = {
        "X-Jivocore-Timestamp": timestamp,
        "X-Jivocore-Signature": signature or sign(SECRET, timestamp, body),
        "Content-Type": "application/json",
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{channel.port}/webhook", data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class TestPhoneChannel(ChannelContract):
    def make_channel(self, tmp_path: Path) -> Channel:
        if not hasattr(self, "provider"):
            self.provider = Provider()
        return PhoneChannel(SECRET, listen_port=0, outbound_url=self.provider.url)

    def desk_plugins(self, channel: Channel) -> list[object]:
        return [channel]

    def client_id(self, n: int) -> str:
        return f"+35191000000{n}"

    def deliver_inbound(self, channel: Any, client_id: str, text: str, message_id: str) -> bool:
        event = {"event": "sms", "id": message_id, "phone": client_id, "text": text}
        event["nonce"] = uuid.uuid4().hex  # a provider's retry is a new request
        try:
            status, _ = post(channel, event)
        except (OSError, AssertionError):  # stopped: nothing listens
            return False
        return status == 200

    def received_outbound(self, channel: Channel) -> list[tuple[str, str]]:
        return [(text["to"], text["text"]) for text in self.provider.received]

    def set_outbound_down(self, channel: Channel, down: bool) -> None:
        self.provider.down = down

    @pytest.fixture(autouse=True)
    def _close_provider(self):
        yield
        if hasattr(self, "provider"):
            self.provider.close()


# --- calls ----------------------------------------------------------------------------------------


@pytest.fixture
def phone(tmp_path):
    provider = Provider()
    channel = PhoneChannel(SECRET, listen_port=0, outbound_url=provider.url)
    clock = FakeClock()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), clock=clock, plugins=[channel])
    desk.start_channels()
    yield desk, channel, clock
    desk.stop_channels()
    desk.shutdown()
    provider.close()


def call(desk: HelpDesk, call_id: str) -> Call:
    with desk.reading() as tx:
        return next(tx.select(Call, {"call_id": call_id}))


def event(kind: str, call_id: str = "c1", **more: Any) -> dict[str, Any]:
    return {"event": kind, "call_id": call_id, "phone": "+351 910 000 001", **more}


def test_a_call_rings_is_answered_and_ends(phone):
    desk, channel, clock = phone
    ann = desk.add_operator("Ann", presence="online")
    status, body = post(channel, event("ringing"))
    assert status == 200
    conversation = desk.conversation(body["conversation_id"])
    assert (conversation.kind, conversation.state) == (Kind.CALL, State.INBOX)
    assert [c.id for c in desk.inbox(ann.id)] == [conversation.id]
    clock.advance(5)
    assert post(channel, event("answered", operator_id=ann.id))[0] == 200
    assert desk.conversation(conversation.id).owner_id == ann.id
    assert call(desk, "c1").state == "answered" and call(desk, "c1").operator_id == ann.id
    clock.advance(95)
    url = "https://recordings.example/c1.mp3"
    status, body = post(channel, event("ended", duration=95, recording_url=url))
    assert (status, body["call"]["state"]) == (200, "ended")
    closed = desk.conversation(conversation.id)
    assert (closed.state, closed.outcome) == (State.CLOSED, Outcome.ANSWERED)
    facts = call(desk, "c1")
    assert (facts.duration, facts.recording_url, facts.phone) == (95, url, "+351910000001")
    assert facts.answered is not None and facts.ended is not None
    types = [e.type for e in desk.events({"conversation_id": conversation.id}).items]
    assert "call_ended" in types and "closed" in types


def test_a_missed_call_waits_in_the_inbox_as_a_callback_request(phone):
    desk, channel, clock = phone
    ann = desk.add_operator("Ann", presence="online")
    post(channel, event("ringing"))
    status, body = post(channel, event("missed"))
    assert status == 200
    conversation = desk.conversation(body["conversation_id"])
    assert conversation.state is State.INBOX and conversation.kind is Kind.CALL
    assert desk.messages(conversation.id)[-1].text.startswith("Missed call from +351910000001")
    assert call(desk, "c1").state == "missed"
    clock.advance(3600)
    assert [c.id for c in desk.inbox(ann.id)] == [conversation.id]
    desk.accept(conversation.id, ann.id)  # the callback
    assert desk.conversation(conversation.id).state is State.ACTIVE


def test_a_call_that_ends_unanswered_is_missed(phone):
    desk, channel, _ = phone
    post(channel, event("ringing"))
    status, body = post(channel, event("ended", duration=0))
    assert (status, body["call"]["state"]) == (200, "missed")
    assert desk.conversation(body["conversation_id"]).state is State.INBOX


def test_a_replayed_request_is_refused(phone):
    desk, channel, _ = phone
    body = json.dumps(event("ringing")).encode()
    timestamp = str(int(desk.clock.now().timestamp()))
    assert post(channel, body, timestamp=timestamp)[0] == 200
    status, answer = post(channel, body, timestamp=timestamp)
    assert (status, answer["error"]) == (409, "Replay")
    with desk.reading() as tx:
        assert tx.count(Conversation) == 1


def test_signatures_and_timestamps_are_checked(phone):
    desk, channel, _ = phone
    body = json.dumps(event("ringing")).encode()
    now = int(desk.clock.now().timestamp())
    bad = sign(b"not the secret", str(now), body)
    assert post(channel, body, signature=bad) == (
        401,
        {
            "error": "SignatureError",
            "message": "the signature does not match the body and timestamp",
        },
    )
    status, answer = post(channel, body, timestamp=str(now - 301))
    assert status == 401 and "301 s off" in answer["message"]
    assert post(channel, body, timestamp=str(now + 301))[0] == 401
    assert post(channel, body, timestamp="yesterday")[0] == 401
    tampered = body.replace(b"+351", b"+352")
    assert post(channel, tampered, signature=sign(SECRET, str(now), body))[0] == 401
    with desk.reading() as tx:
        assert tx.count(Conversation) == 0


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        (b"not json", 422, "ValidationError"),
        ({"event": "exploded", "call_id": "c1", "phone": "+1555"}, 422, "ValidationError"),
        ({"event": "ringing", "call_id": "c1", "phone": "call me"}, 422, "ValidationError"),
        ({"event": "ringing", "phone": "+15550001"}, 422, "ValidationError"),
        (event("ended", duration=-1), 422, "ValidationError"),
        (event("ended", recording_url="javascript:alert(1)"), 422, "ValidationError"),
        (event("answered", operator_id="nobody"), 404, "NotFoundError"),
    ],
)
def test_precise_answers(phone, payload, status, error):
    _, channel, _ = phone
    got, answer = post(channel, payload)
    assert (got, answer["error"]) == (status, error)


def test_answered_by_an_offline_operator_is_a_403(phone):
    desk, channel, _ = phone
    bob = desk.add_operator("Bob", presence="offline")
    post(channel, event("ringing"))
    status, answer = post(channel, event("answered", operator_id=bob.id))
    assert (status, answer["error"]) == (403, "PermissionDenied")


def test_a_blocked_caller_is_a_403(phone):
    desk, channel, _ = phone
    ann = desk.add_operator("Ann", presence="online")
    _, body = post(channel, event("ringing"))
    desk.block(desk.conversation(body["conversation_id"]).client_id, ann.id)
    status, answer = post(channel, event("ringing", call_id="c2"))
    assert (status, answer["error"]) == (403, "ClientBlocked")


def test_only_post_and_bounded_bodies(phone):
    _, channel, _ = phone
    request = urllib.request.Request(f"http://127.0.0.1:{channel.port}/webhook")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    assert post(channel, b"x" * (64 * 1024 + 1))[0] == 413


def test_a_reply_to_a_caller_goes_out_as_a_signed_text(phone):
    desk, channel, _ = phone
    ann = desk.add_operator("Ann", presence="online")
    _, body = post(channel, event("missed"))
    desk.accept(body["conversation_id"], ann.id)
    reply = desk.reply(body["conversation_id"], ann.id, "Sorry we missed you; calling back at 3")
    assert desk.deliver() == 1
    assert desk.delivery(reply.id).status == DeliveryStatus.SENT
    (event_,) = desk.events({"type": "delivered"}).items
    assert event_.data["external_id"] == "sms-1"
