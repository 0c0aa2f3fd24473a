"""The channel contract: the suite on a RecordingChannel-based adapter, and the outbox's promises
(order, dead letters, retry by hand, blocked clients, leases, a killed process) on the desk."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from jivocore import (
    Channel,
    ClientBlocked,
    ConfigurationError,
    DeliveryStatus,
    HelpDesk,
    InvalidTransition,
    NotFoundError,
    Outbound,
    Outcome,
    State,
    Undeliverable,
)
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin
from jivocore.testing.channels import ChannelContract


class RecordingAdapter(RecordingChannel):
    """RecordingChannel with the rest of an adapter: start, stop, and clients writing in."""

    def __init__(self, name: str = "rec", sent: list[Outbound] | None = None) -> None:
        super().__init__(name)
        if sent is not None:
            self.sent = sent  # the far side outlives the adapter (a restart)
        self.desk: HelpDesk | None = None
        self.down = False

    def start(self, desk: HelpDesk) -> None:
        self.desk = desk

    def stop(self) -> None:
        self.desk = None

    def send(self, outbound: Outbound) -> str | None:
        if self.down:
            raise ConnectionError("down")
        return super().send(outbound)

    def incoming(self, client_id: str, text: str, message_id: str) -> bool:
        if self.desk is None:
            return False
        try:
            self.desk.receive(self.name, client_id, text, message_id=message_id)
        except ClientBlocked:
            return False
        return True


class TestRecordingAdapter(ChannelContract):
    def make_channel(self, tmp_path: Path) -> Channel:
        self.sent: list[Outbound] = getattr(self, "sent", [])
        return RecordingAdapter(sent=self.sent)

    def deliver_inbound(self, channel: Any, client_id: str, text: str, message_id: str) -> bool:
        return bool(channel.incoming(client_id, text, message_id))

    def received_outbound(self, channel: Channel) -> list[tuple[str, str]]:
        return [(o.identity.external_id, o.message.text) for o in self.sent if o.identity]

    def set_outbound_down(self, channel: Any, down: bool) -> None:
        channel.down = down


# --- the desk's side of the contract ---------------------------------------------------------


@pytest.fixture
def web_desk(desk: HelpDesk) -> HelpDesk:
    return desk


def active(desk: HelpDesk, client: str = "v1") -> tuple[str, str]:
    ann = next((o for o in desk.operators() if o.name == "Ann"), None)
    ann = ann or desk.add_operator("Ann", presence="online")
    message = desk.receive("web", client, "hello")
    conversation = desk.conversation(message.conversation_id)
    if conversation.state is State.INBOX:
        desk.accept(conversation.id, ann.id)
    return conversation.id, ann.id


def test_client_gone_closes_a_waiting_conversation_as_missed(desk):
    message = desk.receive("web", "v1", "hello")
    gone = desk.client_gone("web", "v1")
    assert gone is not None and gone.id == message.conversation_id
    assert (gone.state, gone.outcome) == (State.CLOSED, Outcome.MISSED)
    assert desk.client_gone("web", "v1") is None  # nothing waits any more
    assert desk.client_gone("web", "nobody") is None


def test_client_gone_leaves_an_accepted_conversation_to_the_operator(desk):
    conversation_id, _ = active(desk)
    assert desk.client_gone("web", "v1") is None
    assert desk.conversation(conversation_id).state is State.ACTIVE


def test_undeliverable_is_dead_at_once(desk, channel, monkeypatch):
    conversation_id, ann = active(desk)

    def refuse(outbound):
        raise Undeliverable("no such address")

    monkeypatch.setattr(channel, "send", refuse)
    reply = desk.reply(conversation_id, ann, "hello?")
    assert desk.deliver() == 0
    delivery = desk.delivery(reply.id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DEAD, 1)
    assert "no such address" in delivery.error
    (event,) = desk.events({"type": "delivery_dead"}).items
    assert event.data["message_id"] == reply.id


def test_a_dead_delivery_holds_nothing_back(desk, channel, clock, monkeypatch):
    conversation_id, ann = active(desk)
    calls = []

    def send(outbound):
        calls.append(outbound.message.text)
        if outbound.message.text == "bad":
            raise Undeliverable("refused")
        return "ok"

    monkeypatch.setattr(channel, "send", send)
    desk.reply(conversation_id, ann, "bad")
    desk.reply(conversation_id, ann, "good")
    assert desk.deliver() == 1
    assert calls == ["bad", "good"]


def test_retry_by_hand_is_refused_unless_dead_and_while_blocked(desk, channel, clock):
    conversation_id, ann = active(desk)
    reply = desk.reply(conversation_id, ann, "hello")
    with pytest.raises(InvalidTransition, match="pending, not dead"):
        desk.retry_delivery(reply.id, ann)
    channel.failures = 100
    for _ in range(8):
        desk.deliver()
        clock.advance(10_000)
    assert desk.delivery(reply.id).status == DeliveryStatus.DEAD
    client_id = desk.conversation(conversation_id).client_id
    desk.block(client_id, ann)
    with pytest.raises(ClientBlocked):
        desk.retry_delivery(reply.id, ann)
    assert desk.delivery(reply.id).status == DeliveryStatus.DEAD
    desk.unblock(client_id, ann)
    channel.failures = 0
    retried = desk.retry_delivery(reply.id, ann)
    assert (retried.status, retried.attempts, retried.error) == (DeliveryStatus.PENDING, 0, None)
    assert desk.deliver() == 1
    assert [o.message.id for o in channel.sent] == [reply.id]
    (event,) = desk.events({"type": "delivery_retried"}).items
    assert event.actor_id == ann


def test_delivery_of_a_client_message_is_not_found(desk):
    message = desk.receive("web", "v1", "hello")
    with pytest.raises(NotFoundError):
        desk.delivery(message.id)
    with pytest.raises(InvalidTransition, match="no delivery"):
        desk.retry_delivery(message.id, desk.add_operator("Ann").id)


def test_deliveries_of_a_conversation(desk):
    conversation_id, ann = active(desk)
    one = desk.reply(conversation_id, ann, "one")
    two = desk.reply(conversation_id, ann, "two")
    active(desk, "v2")
    page = desk.deliveries({"conversation_id": conversation_id})
    assert [d.message_id for d in page.items] == [one.id, two.id]


def test_a_delivery_another_worker_holds_holds_back_the_later_ones(desk, channel, clock):
    conversation_id, ann = active(desk)
    desk.reply(conversation_id, ann, "first")
    second = desk.reply(conversation_id, ann, "second")
    entered, release = threading.Event(), threading.Event()
    original = channel.send

    def slow(outbound):
        entered.set()
        release.wait(10)
        return original(outbound)

    channel.send = slow
    worker = threading.Thread(target=desk.deliver, kwargs={"limit": 1})
    worker.start()
    assert entered.wait(10)
    channel.send = original
    assert desk.deliver() == 0, "the second must not overtake the first while it is being sent"
    assert desk.delivery(second.id).status == DeliveryStatus.PENDING
    release.set()
    worker.join(10)
    assert desk.deliver() == 1
    assert [o.message.text for o in channel.sent] == ["first", "second"]


def test_a_channel_no_longer_installed_is_retried(tmp_path, clock):
    web = RecordingChannel("web")
    path = str(tmp_path / "desk.db")
    with HelpDesk.open(path, clock=clock, plugins=[channel_plugin(web)]) as desk:
        conversation_id, ann = active(desk)
        reply = desk.reply(conversation_id, ann, "hello")
    with HelpDesk.open(path, clock=clock, plugins=[channel_plugin(RecordingChannel("sms"))]) as d:
        assert d.deliver() == 0
        delivery = d.delivery(reply.id)
        assert delivery.status == DeliveryStatus.PENDING and "not installed" in delivery.error
    with HelpDesk.open(path, clock=clock, plugins=[channel_plugin(web)]) as desk:
        clock.advance(60)
        assert desk.deliver() == 1


class Starting:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def send(self, outbound: Outbound) -> str | None:
        return None

    def start(self, desk: HelpDesk) -> None:
        if self.fail:
            raise OSError("address in use")
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.name == "b":
            raise RuntimeError("stuck")


def test_start_and_stop_channels(tmp_path, caplog):
    log: list[str] = []
    channels = [Starting("a", log), Starting("b", log), RecordingChannel("c")]
    with HelpDesk.open(str(tmp_path / "d.db"), plugins=[channel_plugin(*channels)]) as desk:
        desk.start_channels()
        assert log == ["start a", "start b"]
        with caplog.at_level(logging.ERROR, logger="jivocore"):
            desk.stop_channels()
        assert log[2:] == ["stop b", "stop a"], "a channel failing to stop stops no other"
        assert "channel 'b' failed to stop" in caplog.text


def test_a_channel_failing_to_start_stops_the_started_ones(tmp_path):
    log: list[str] = []
    channels = [Starting("a", log), Starting("b", log, fail=True)]
    with HelpDesk.open(str(tmp_path / "d.db"), plugins=[channel_plugin(*channels)]) as desk:
        with pytest.raises(ConfigurationError, match="channel 'b' failed to start: OSError"):
            desk.start_channels()
        assert log == ["start a", "stop a"]


# --- a process killed between commit and delivery ------------------------------------------------

CHILD = """
import sys, time
from jivocore import HelpDesk
from jivocore.testing import FakeClock, channel_plugin

class Hanging:
    name = "web"
    def send(self, outbound):
        print("sending", flush=True)
        time.sleep(3600)

path, where = sys.argv[1], sys.argv[2]
desk = HelpDesk.open(path, clock=FakeClock(), plugins=[channel_plugin(Hanging())])
ann = desk.add_operator("Ann", presence="online")
message = desk.receive("web", "v1", "hello")
desk.accept(message.conversation_id, ann.id)
reply = desk.reply(message.conversation_id, ann.id, "on its way")
print("committed", reply.id, flush=True)
if where == "send":
    desk.deliver()
time.sleep(3600)
"""


@pytest.mark.parametrize("where", ["commit", "send"])
def test_killed_between_commit_and_delivery_delivers_on_restart(tmp_path, where):
    path = str(tmp_path / "desk.db")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, where], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        word, reply_id = child.stdout.readline().split()
        assert word == "committed"
        if where == "send":
            assert child.stdout.readline().strip() == "sending"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    web, clock = RecordingChannel("web"), FakeClock()
    with HelpDesk.open(path, clock=clock, plugins=[channel_plugin(web)]) as desk:
        if where == "send":
            assert desk.deliver() == 0, "the dead worker's lease still holds it"
            clock.advance(desk.settings["delivery_lease"])
        assert desk.deliver() == 1
        clock.advance(3600)
        assert desk.deliver() == 0
        assert [o.message.id for o in web.sent] == [reply_id]
        assert desk.delivery(reply_id).status == DeliveryStatus.SENT
