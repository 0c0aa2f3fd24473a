"""jivocore_email against real SMTP on loopback, both ways: clients write with smtplib to the
channel's aiosmtpd server; replies leave through smtplib to an aiosmtpd sink."""

from __future__ import annotations

import email
import email.policy
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import attrs
import pytest

from jivocore import Channel, ConfigurationError, Conversation, DeliveryStatus, HelpDesk, State
from jivocore.testing import FakeClock
from jivocore.testing.channels import ChannelContract
from jivocore_email import Email, EmailChannel, SMTPServer, html_to_text, parse_email

DESK = "support@desk.test"


class Sink:
    """An SMTP server that keeps what it is sent; `down()` closes its port, `up()` reopens it."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []
        self.server = SMTPServer(self, "127.0.0.1", 0)
        self.server.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start()

    def emails(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for _, raw in self.received
        ]


@pytest.fixture
def sink():
    sink = Sink()
    yield sink
    sink.down()


def write(port: int, sender: str, text: str, **headers: str) -> None:
    """A client writes to the desk with smtplib; raises what smtplib raises."""
    mail = EmailMessage()
    mail["From"] = headers.pop("From", sender)
    mail["To"] = DESK
    mail["Subject"] = headers.pop("Subject", "Help, please")
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(text)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(mail, from_addr=sender, to_addrs=[DESK])


def send_raw(port: int, sender: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(sender, [DESK], raw)


class TestEmailChannel(ChannelContract):
    def make_channel(self, tmp_path: Path) -> Channel:
        if not hasattr(self, "sink"):
            self.sink = Sink()
        return EmailChannel(
            DESK, smtp_host="127.0.0.1", smtp_port=self.sink.server.port, listen_port=0
        )

    def desk_plugins(self, channel: Channel) -> list[object]:
        return [channel]

    def client_id(self, n: int) -> str:
        return f"client{n}@example.com"

    def deliver_inbound(self, channel: Any, client_id: str, text: str, message_id: str) -> bool:
        try:
            write(channel.port, client_id, text, Message_ID=f"<{message_id}@example.com>")
        except (smtplib.SMTPResponseException, smtplib.SMTPServerDisconnected, OSError):
            return False
        return True

    def received_outbound(self, channel: Channel) -> list[tuple[str, str]]:
        return [
            (str(m["To"].addresses[0].addr_spec), m.get_body(("plain",)).get_content())
            for m in self.sink.emails()
        ]

    def set_outbound_down(self, channel: Channel, down: bool) -> None:
        if down:
            self.sink.down()
        else:
            self.sink.up()

    @pytest.fixture(autouse=True)
    def _stop_sink(self):
        yield
        if hasattr(self, "sink"):
            self.sink.down()


# --- a desk with the email channel ------------------------------------------------------------


@pytest.fixture
def mail_desk(tmp_path, sink):
    clock = FakeClock()
    channel = EmailChannel(DESK, smtp_host="127.0.0.1", smtp_port=sink.server.port, listen_port=0)
    desk = HelpDesk.open(str(tmp_path / "desk.db"), clock=clock, plugins=[channel])
    desk.start_channels()
    desk.test_clock = clock  # type: ignore[attr-defined]
    desk.test_channel = channel  # type: ignore[attr-defined]
    desk.test_ann = desk.add_operator("Ann", presence="online")  # type: ignore[attr-defined]
    yield desk
    desk.stop_channels()
    desk.shutdown()


def emails_of(desk: HelpDesk) -> list[Email]:
    with desk.reading() as tx:
        return list(tx.select(Email, order=("at", "id")))


def only_conversation(desk: HelpDesk) -> str:
    with desk.reading() as tx:
        (conversation,) = tx.select(Conversation)
        return conversation.id


def test_the_same_email_twice_is_stored_once(mail_desk):
    port = mail_desk.test_channel.port
    for _ in range(2):
        write(port, "eve@example.com", "my order is late", Message_ID="<order-1@example.com>")
    conversation_id = only_conversation(mail_desk)
    assert [m.text for m in mail_desk.messages(conversation_id)] == ["my order is late"]
    assert [e.header_id for e in emails_of(mail_desk)] == ["<order-1@example.com>"]


def test_an_email_without_message_id_is_stored_once_by_its_bytes(mail_desk):
    raw = b"From: eve@example.com\r\nTo: support@desk.test\r\nSubject: hi\r\n\r\nhello\r\n"
    send_raw(mail_desk.test_channel.port, "eve@example.com", raw)
    send_raw(mail_desk.test_channel.port, "eve@example.com", raw)
    assert [m.text for m in mail_desk.messages(only_conversation(mail_desk))] == ["hello"]


def reply_and_deliver(desk: HelpDesk, sink: Sink, text: str) -> EmailMessage:
    conversation = desk.conversation(only_conversation(desk))
    if conversation.state is State.INBOX:
        desk.accept(conversation.id, desk.test_ann.id)  # type: ignore[attr-defined]
    desk.reply(conversation.id, desk.test_ann.id, text)  # type: ignore[attr-defined]
    assert desk.deliver() == 1
    return sink.emails()[-1]


def test_a_reply_to_the_operators_email_lands_in_the_same_conversation(mail_desk, sink):
    port = mail_desk.test_channel.port
    write(port, "eve@example.com", "where is my parcel?", Message_ID="<q1@example.com>")
    sent = reply_and_deliver(mail_desk, sink, "It left today.")
    assert sent["In-Reply-To"] == "<q1@example.com>"
    assert sent["Subject"] == "Re: Help, please"
    assert sent["From"].addresses[0].display_name == "Ann"
    write(
        port,
        "eve@example.com",
        "Thanks!\n\nOn Monday Ann wrote:\n> It left today.\n",
        Message_ID="<q2@example.com>",
        In_Reply_To=sent["Message-ID"],
        References=f"<q1@example.com> {sent['Message-ID']}",
    )
    conversation_id = only_conversation(mail_desk)
    texts = [m.text for m in mail_desk.messages(conversation_id)]
    assert texts == ["where is my parcel?", "It left today.", "Thanks!"]
    second = reply_and_deliver(mail_desk, sink, "You are welcome.")
    assert second["In-Reply-To"] == "<q2@example.com>"
    assert second["References"].split()[-1] == "<q2@example.com>"


def test_a_reply_from_the_clients_other_address_threads_by_references(mail_desk, sink):
    port = mail_desk.test_channel.port
    write(port, "eve@example.com", "where is my parcel?", Message_ID="<q1@example.com>")
    sent = reply_and_deliver(mail_desk, sink, "Which order?")
    write(
        port,
        "eve.work@example.org",
        "Order 42 (writing from work)",
        Message_ID="<q2@example.org>",
        In_Reply_To=sent["Message-ID"],
    )
    conversation_id = only_conversation(mail_desk)
    assert [m.text for m in mail_desk.messages(conversation_id)][-1] == (
        "Order 42 (writing from work)"
    )
    assert emails_of(mail_desk)[-1].address == "eve.work@example.org"


def test_html_parts_are_reduced_to_text_and_attachments_kept_as_metadata(mail_desk):
    mail = EmailMessage()
    mail["From"] = "Eve <eve@example.com>"
    mail["To"] = DESK
    mail["Subject"] = "invoice"
    mail["Message-ID"] = "<html-1@example.com>"
    mail.set_content(
        "<html><head><style>p{color:red}</style></head><body><p>Hello &amp; thanks,</p>"
        "<ul><li>one</li><li>two</li></ul><script>alert(1)</script></body></html>",
        subtype="html",
    )
    mail.add_attachment(b"%PDF-1.4 ...", maintype="application", subtype="pdf", filename="a.pdf")
    send_raw(mail_desk.test_channel.port, "eve@example.com", mail.as_bytes())
    (message,) = mail_desk.messages(only_conversation(mail_desk))
    assert message.text == "Hello & thanks,\n\n- one\n\n- two"
    (stored,) = emails_of(mail_desk)
    assert [(a.filename, a.content_type, a.size) for a in stored.attachments] == [
        ("a.pdf", "application/pdf", 12)
    ]
    assert stored.subject == "invoice"


def test_plain_text_is_preferred_to_html():
    mail = EmailMessage()
    mail.set_content("plain words")
    mail.add_alternative("<p>html words</p>", subtype="html")
    assert parse_email(mail.as_bytes()).text == "plain words"
    assert html_to_text("<div>a<br>b</div><p>c&nbsp;d</p>") == "a\nb\n\nc d"


def test_an_email_of_attachments_only_is_stored_with_a_note(mail_desk):
    mail = EmailMessage()
    mail["From"] = "eve@example.com"
    mail["To"] = DESK
    mail["Message-ID"] = "<att@example.com>"
    mail.add_attachment(b"\x89PNG", maintype="image", subtype="png", filename="shot.png")
    send_raw(mail_desk.test_channel.port, "eve@example.com", mail.as_bytes())
    (message,) = mail_desk.messages(only_conversation(mail_desk))
    assert message.text == "[attachments: shot.png]"


def test_header_injection_is_impossible(mail_desk, sink):
    """Names and subjects with CR/LF, raw or RFC 2047-encoded, never add a header."""
    raw = (
        b"From: =?utf-8?q?Eve=0D=0ABcc=3A_victim=40evil=2Eexample?= <eve@example.com>\r\n"
        b"To: support@desk.test\r\n"
        b"Subject: =?utf-8?q?hi=0D=0ABcc=3A_victim2=40evil=2Eexample=0D=0A=0D=0Abody?=\r\n"
        b"Message-ID: <inject@example.com>\r\n\r\nhello\r\n"
    )
    send_raw(mail_desk.test_channel.port, "eve@example.com", raw)
    client = mail_desk.client(mail_desk.conversation(only_conversation(mail_desk)).client_id)
    assert "\n" not in client.name and "\r" not in client.name
    ann = mail_desk.test_ann
    mail_desk.update_operator(attrs.evolve(ann, name="Ann\r\nBcc: victim3@evil.example"))
    mail_desk.test_ann = mail_desk.operator(ann.id)
    reply_and_deliver(mail_desk, sink, "hello\r\nBcc: victim4@evil.example")
    ((recipients, raw_out),) = sink.received
    assert recipients == ["eve@example.com"]
    sent = sink.emails()[0]
    assert sent.get_all("Bcc") is None and sent.get_all("Cc") is None
    assert len(sent.get_all("Subject")) == 1 and "\n" not in str(sent["Subject"])
    head = raw_out.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
    assert str(sent["To"].addresses[0].addr_spec) == "eve@example.com"


def test_an_identity_that_is_no_address_is_undeliverable(mail_desk, sink):
    message = mail_desk.receive("email", "eve@example.com\r\nBcc: x@evil.example", "hi")
    mail_desk.accept(message.conversation_id, mail_desk.test_ann.id)
    reply = mail_desk.reply(message.conversation_id, mail_desk.test_ann.id, "hello")
    assert mail_desk.deliver() == 0
    assert mail_desk.delivery(reply.id).status == DeliveryStatus.DEAD
    assert sink.received == []


def test_a_blocked_sender_is_refused_with_550(mail_desk):
    port = mail_desk.test_channel.port
    write(port, "eve@example.com", "hello", Message_ID="<b1@example.com>")
    conversation = mail_desk.conversation(only_conversation(mail_desk))
    mail_desk.block(conversation.client_id, mail_desk.test_ann.id)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        write(port, "eve@example.com", "let me in", Message_ID="<b2@example.com>")
    assert refused.value.smtp_code == 550


def test_the_smtp_server_down_for_the_first_attempts_delivers_exactly_once(mail_desk, sink):
    write(mail_desk.test_channel.port, "eve@example.com", "hello", Message_ID="<d1@example.com>")
    conversation_id = only_conversation(mail_desk)
    ann = mail_desk.test_ann
    mail_desk.accept(conversation_id, ann.id)
    sink.down()
    reply = mail_desk.reply(conversation_id, ann.id, "we are on it")
    for _ in range(3):
        assert mail_desk.deliver() == 0
        mail_desk.test_clock.advance(3600)
    delivery = mail_desk.delivery(reply.id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 3)
    assert "Connection refused" in delivery.error or "ConnectionRefused" in delivery.error
    sink.up()
    assert mail_desk.deliver() == 1
    for _ in range(3):
        mail_desk.test_clock.advance(3600)
        assert mail_desk.deliver() == 0
    assert len(sink.received) == 1
    assert sink.emails()[0].get_body(("plain",)).get_content().strip() == "we are on it"


CHILD = """
import sys, time
from jivocore import HelpDesk
from jivocore.testing import FakeClock
from jivocore_email import EmailChannel

path, port = sys.argv[1], int(sys.argv[2])
channel = EmailChannel("support@desk.test", smtp_host="127.0.0.1", smtp_port=port, listen_port=0)
desk = HelpDesk.open(path, clock=FakeClock(), plugins=[channel])
desk.start_channels()
raw = b"From: eve@example.com\\r\\nMessage-ID: <k1@example.com>\\r\\n\\r\\nhi\\r\\n"
assert channel.take(raw).startswith("250")
ann = desk.add_operator("Ann", presence="online")
conversation_id = desk.inbox(ann.id)[0].id
desk.accept(conversation_id, ann.id)
reply = desk.reply(conversation_id, ann.id, "sent before the crash?")
print("committed", reply.id, flush=True)
time.sleep(3600)
"""


def test_killed_between_commit_and_delivery_delivers_on_restart(tmp_path, sink):
    path = str(tmp_path / "desk.db")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, str(sink.server.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        word, reply_id = child.stdout.readline().split()
        assert word == "committed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL and sink.received == []
    channel = EmailChannel(DESK, smtp_host="127.0.0.1", smtp_port=sink.server.port, listen_port=0)
    with HelpDesk.open(path, clock=FakeClock(), plugins=[channel]) as desk:
        desk.start_channels()
        try:
            assert desk.deliver() == 1
            assert desk.deliver() == 0
        finally:
            desk.stop_channels()
        assert desk.delivery(reply_id).status == DeliveryStatus.SENT
    (sent,) = sink.emails()
    assert sent["In-Reply-To"] == "<k1@example.com>"
    assert sent.get_body(("plain",)).get_content().strip() == "sent before the crash?"


def test_a_stopping_channel_defers_mail_with_421(mail_desk):
    channel = mail_desk.test_channel
    channel._desk = None  # as stop() leaves it before the server closes
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        write(channel.port, "eve@example.com", "hello")
    assert deferred.value.smtp_code == 421 or deferred.value.smtp_code // 100 == 4
    channel._desk = mail_desk


def test_the_channel_needs_its_plugin(tmp_path):
    channel = EmailChannel(DESK, listen_port=0)
    desk = HelpDesk.open(str(tmp_path / "d.db"), plugins=[channel], block=["jivocore_email"])
    with desk, pytest.raises(ConfigurationError, match="jivocore_email plugin is not registered"):
        desk.start_channels()
